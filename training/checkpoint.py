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

from models.compat import recorded_config
from utils.atomic import atomic_save_safetensors, atomic_write_bytes, fsync_dir
from utils.dist import copy_full_, gather_state, is_sharded
from utils.errors import BadInput

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
    bad = [n for n, t in trainable.items() if not torch.isfinite(t).all()]
    if bad:  # never write a checkpoint a resume could not continue from
        raise NonFiniteState(f"refusing to checkpoint step {step}: non-finite values in {bad[0]}"
                             f"{f' and {len(bad) - 1} more tensors' if len(bad) > 1 else ''}")
    tmp = ckpt_root / f"step_{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_save_safetensors(trainable, tmp / "trainable.safetensors")
    if os.environ.get(FAULT_ENV) == str(step):  # test hook: die with a half-written checkpoint
        os.kill(os.getpid(), 9)
    state = {"optimizer": optim, "scheduler": scheduler.state_dict(),
             "rng": rng_state(), "step": step, **extra}
    save_torch(state, tmp / "state.pt")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    fsync_dir(ckpt_root)  # the rename survives a power loss
    atomic_write_bytes(ckpt_root / "latest", final.name.encode())
    for old in sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and p.suffix != ".tmp")[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


class _WriteRecorder:
    """A file for torch.save that keeps the OSError of a failed write (torch reports it as a
    RuntimeError "unexpected pos ..." that names neither the file nor the reason)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self):
        return self.f.flush()


def save_torch(obj, path) -> None:
    """torch.save(obj, path), fsynced; a failed write (e.g. a full disk) is the file system's
    OSError naming `path`."""
    f = open(path, "wb")
    recorder = _WriteRecorder(f)
    try:
        torch.save(obj, recorder)
        f.flush()
        os.fsync(f.fileno())
    except (RuntimeError, OSError) as e:
        error = recorder.error or (e if isinstance(e, OSError) else None)
        try:
            f.close()
        except OSError:
            pass
        if error is not None:
            raise OSError(error.errno, error.strerror, str(path)) from None
        raise
    f.close()


def complete(path: Path) -> bool:
    return (path / "trainable.safetensors").is_file() and (path / "state.pt").is_file()


def latest_checkpoint(ckpt_root, log=print) -> Path | None:
    """The newest complete checkpoint, or None; removes leftovers of interrupted writes. When the
    `latest` pointer or the folder it names is missing, falls back to the newest complete step_*
    folder and says so."""
    ckpt_root = Path(ckpt_root)
    for tmp in ckpt_root.glob("step_*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)
    pointer = ckpt_root / "latest"
    if pointer.is_file():
        path = ckpt_root / pointer.read_text().strip()
        if complete(path):
            return path
    found = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and complete(p))
    if found:
        log(f"note: {pointer} is missing or names no complete checkpoint; using the newest complete "
            f"one, {found[-1]}")
        return found[-1]
    return None


def reason(e: BaseException) -> str:
    """An exception as a short phrase for a one-line message: its type and first sentence."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text.split('. ')[0][:160]}" if text else type(e).__name__


def discard_checkpoint(ckpt_root, step: int) -> None:
    """Remove checkpoint `step`; `latest` then names the newest complete one left (or is removed).
    The pointer changes first, so a kill in between leaves it naming a complete checkpoint."""
    ckpt_root = Path(ckpt_root)
    path, pointer = ckpt_root / f"step_{step:06d}", ckpt_root / "latest"
    rest = sorted(p for p in ckpt_root.glob("step_*") if p != path and p.suffix != ".tmp" and complete(p))
    if rest:
        atomic_write_bytes(pointer, rest[-1].name.encode())
    else:
        pointer.unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)
    fsync_dir(ckpt_root)


class NonFiniteState(RuntimeError):
    """A trainable tensor or gradient holds NaN or inf."""


def load_checkpoint(path, model, optimizer, scheduler, config: dict | None = None) -> dict:
    """Restore trainable tensors, optimizer, scheduler and RNG; returns the saved state dict.
    A damaged file, tensors that do not fit the model, or a checkpoint recorded with another
    configuration than `config` is a ValueError naming the file (and the differences)."""
    path = Path(path)
    if config is not None:
        try:
            recorded = torch.load(path / "state.pt", weights_only=True).get("config")
        except Exception as e:
            raise BadInput(f"{path / 'state.pt'}: cannot be read ({reason(e)}; damaged or truncated?)") from None
        # an option added since the checkpoint was written is absent from it: equal when at its default None;
        # target_modules null (runs made before the resolved list was recorded) is today's default list
        if isinstance(recorded, dict):
            recorded = recorded_config(recorded, config, getattr(getattr(model, "config", None), "model_type", None))
        first = ("peft_type", "model_name", "r_ab", "target_modules", "dataset")
        diff = [] if recorded is None else sorted(
            (k for k in recorded.keys() | config.keys() if recorded.get(k) != config.get(k)),
            key=lambda k: (k not in first, first.index(k) if k in first else 0, k))
        if diff:
            more = f" and {len(diff) - 6} more" if len(diff) > 6 else ""
            raise BadInput(f"{path} was made with another configuration than the run's args.json: "
                           + ", ".join(f"{k} {recorded.get(k)!r} -> {config.get(k)!r}" for k in diff[:6]) + more)
    weights = path / "trainable.safetensors"
    try:
        saved = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise BadInput(f"{weights}: cannot be read ({reason(e)}; damaged or truncated?)") from None
    bad = [n for n, t in saved.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:  # save_checkpoint never writes these: the file was damaged or written elsewhere
        raise BadInput(f"{weights}: non-finite values in {bad[0]}"
                       f"{f' and {len(bad) - 1} more tensors' if len(bad) > 1 else ''}; not a checkpoint "
                       f"to continue from (resume from an earlier one: remove {path})")
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(params.keys() - saved.keys()), sorted(saved.keys() - params.keys())
    if missing or unexpected:
        raise BadInput(f"{weights} does not fit this run's model (another method or rank?): missing "
                       f"{missing[:3]}, unexpected {unexpected[:3]}")
    for name, value in saved.items():
        if tuple(value.shape) != tuple(params[name].shape):
            raise BadInput(f"{weights}: {name} has shape {tuple(value.shape)}, the model's is "
                           f"{tuple(params[name].shape)} (another rank?)")
        copy_full_(params[name], value)  # into this rank's shard under FSDP2
    try:
        state = torch.load(path / "state.pt", weights_only=True)
    except Exception as e:
        raise BadInput(f"{path / 'state.pt'}: cannot be read ({reason(e)}; damaged or truncated?)") from None
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, optimizer, state["optimizer"],
                                 options=StateDictOptions(full_state_dict=True))
    else:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state
