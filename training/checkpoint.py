"""Crash-safe checkpoints with everything needed for an exact resume.

Layout under RUN_DIR/checkpoints/:
    step_000040/          a complete checkpoint (written as step_000040.tmp/, then renamed)
        trainable.safetensors   every trainable tensor, by parameter name
        state.pt                optimizer, scheduler, RNG states, step, best val loss
    latest                text file naming the newest complete checkpoint (written atomically)

A kill at any moment leaves `latest` pointing at a complete checkpoint: the new directory only gets
its final name once all its files are fsynced, and `latest` is replaced only after that rename.
`state.pt` holds only tensors and plain Python containers and is read with weights_only=True.
"""
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from utils.atomic import atomic_save_safetensors, atomic_write_bytes
from utils.dist import copy_full_, gather_state, is_sharded

FAULT_ENV = "KNOWHIRA_FAULT_KILL_IN_SAVE"  # fault injection for tests: SIGKILL mid-write at step N


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def optimizer_state(model, optimizer) -> dict:
    """The optimizer's state dict; under FSDP2 the whole (unsharded) one, keyed by parameter name
    (torch.distributed.checkpoint; collective, non-empty on rank 0 only)."""
    if not is_sharded(model):
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_checkpoint(ckpt_root, step: int, model, optimizer, scheduler, extra: dict, keep: int = 2,
                    write: bool = True) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep`.
    Every rank calls this (gathering FSDP2 shards is collective); only `write=True` writes."""
    ckpt_root = Path(ckpt_root)
    final = ckpt_root / f"step_{step:06d}"
    trainable = gather_state(((n, p) for n, p in model.named_parameters() if p.requires_grad), write)
    optim = optimizer_state(model, optimizer)
    if not write:
        return final
    tmp = ckpt_root / f"step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_save_safetensors(trainable, tmp / "trainable.safetensors")
    if os.environ.get(FAULT_ENV) == str(step):  # test hook: die with a half-written checkpoint
        os.kill(os.getpid(), 9)
    state = {"optimizer": optim, "scheduler": scheduler.state_dict(),
             "rng": rng_state(), "step": step, **extra}
    torch.save(state, tmp / "state.pt")
    with open(tmp / "state.pt", "rb") as f:
        os.fsync(f.fileno())
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_bytes(ckpt_root / "latest", final.name.encode())
    for old in sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and p.suffix != ".tmp")[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_root) -> Path | None:
    """The newest complete checkpoint, or None; removes leftovers of interrupted writes."""
    ckpt_root = Path(ckpt_root)
    for tmp in ckpt_root.glob("step_*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    pointer = ckpt_root / "latest"
    if not pointer.is_file():
        return None
    path = ckpt_root / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_checkpoint(path, model, optimizer, scheduler) -> dict:
    """Restore trainable tensors, optimizer, scheduler and RNG; returns the saved state dict."""
    path = Path(path)
    saved = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    for name, value in saved.items():
        copy_full_(params[name], value)  # into this rank's shard under FSDP2
    state = torch.load(path / "state.pt", weights_only=True)
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state
