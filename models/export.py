"""Sharing a result: open what `--ckpt` names, a run folder of this project or a stock peft adapter
folder, and write it for the stock ecosystem.

    python train_knowhira.py --ckpt RUN --export peft --export_dir OUT     # a stock peft adapter
    python train_knowhira.py --ckpt RUN --export merged --export_dir OUT   # a plain HF model folder

`--export peft` is the method's `export_peft` (its PeftInterop capability, models/methods/capabilities.py):
the Hadamard family writes peft's HiRA with B′ = s·B·M (hira.py), kasa writes peft's own KaSA (a LoRA
variant; kasa.py), lora/dora/ia3 copy their peft adapter, fft (no PeftInterop) refuses.
`--export merged` loads the trained state, merges it with the method's `merge_and_unload` (Mergeable), and writes
weights (safetensors), config, generation config and tokenizer (`models.adapter.save_plain_model`);
a GGUF base is written as plain dequantised weights. Either is written into a temporary folder
beside OUT and renamed to OUT once complete, so OUT is whole or absent.

`open_checkpoint` is also how evaluation (eval/recipe.py) gets its model for `--ckpt`.
"""
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from models.compat import has_adapter_config
from models.files import PEFT_CONFIG, PEFT_WEIGHTS
from models.get_models import ModelOptions
from utils.atomic import errno_of_safetensors_error, fsync_dir
from utils.errors import BadInput
from utils.options import Options, option
from utils.runs import read_json, run_args, saved_dir_of

EXPORT_KINDS = ("peft", "merged")


@dataclass
class ExportOptions(Options):
    export: str | None = option(None, "with --ckpt: write the run (or peft adapter) as a stock peft adapter "
                                "('peft'; HiRA for knowhira/hira/hira_sb) or a plain Hugging Face model "
                                "folder ('merged') into --export_dir, instead of evaluating", choices=EXPORT_KINDS)
    export_dir: str | None = option(None, "the folder --export creates (must not exist)")


# ---- what --ckpt names -------------------------------------------------------------------------
def peft_adapter_config(folder) -> dict | None:
    """The adapter_config.json of a stock peft adapter in `folder` (its peft_type is one of peft's),
    else None (no such file, or one of this project's old adapters, whose peft_type is ours)."""
    path = Path(folder) / PEFT_CONFIG
    if not path.is_file():
        return None
    config = read_json(path)
    from peft import PeftType

    if isinstance(config, dict) and config.get("peft_type") in {t.value for t in PeftType}:
        return config
    return None


def checkpoint_kind(ckpt) -> str:
    """'run' (a run folder: args.json) or 'peft' (a stock peft adapter folder); else an error
    saying what the folder is not."""
    path = Path(ckpt)
    if (path / "args.json").is_file():
        return "run"
    if peft_adapter_config(path) is not None:
        return "peft"
    if has_adapter_config(path):
        raise BadInput(f"--ckpt {ckpt} is an adapter folder of a run, not a run: pass the run folder "
                       f"({path.parent}), whose args.json names the base model")
    raise BadInput(f"--ckpt {ckpt}: no args.json there (not a run folder) and no "
                   f"{PEFT_CONFIG} of a peft adapter")


@dataclass
class Checkpoint:
    """What --ckpt names, opened (nothing loaded until `load`)."""

    path: Path
    kind: str  # "run" | "peft"
    method: object  # models.methods.Method
    saved_dir: Path  # the adapter (or, for fft, model) folder
    base: ModelOptions  # the base model: a run's from args.json; a peft adapter's from --model_name
    run_args: dict | None = None  # a run's args.json
    adapter: str | None = None  # a run's evaluated state: best, final or step_N
    step_dir: Path | None = None  # step_N: RUN_DIR/checkpoints/step_<N>/, whose trainable tensors replace saved_dir's
    peft_config: dict | None = None  # a peft adapter's adapter_config.json
    cfg: object = None  # a peft adapter's config as the method's (set by `load`)

    def load(self):
        """(the base model with the trained state on it, unmerged; tokenizer)."""
        from models.get_models import load_base_model

        model, tokenizer = load_base_model(**asdict(self.base))
        if self.kind == "run":
            model = self.method.load(model, self.saved_dir)
            if self.step_dir is not None:
                load_step_tensors(model, self.step_dir / "trainable.safetensors")
            return model, tokenizer
        model, self.cfg = self.method.load_peft(model, self.saved_dir, self.peft_config)
        return model, tokenizer

    @property
    def base_model_name(self) -> str:
        b = self.base
        return str(Path(b.model_name) / b.gguf_file) if b.gguf_file else b.model_name

    def adapter_params(self) -> int:
        """Elements in a peft adapter's tensors (its trainable-parameter count)."""
        from safetensors import safe_open

        total = 0
        for f in sorted(self.saved_dir.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as h:
                for key in h.keys():
                    n = 1
                    for d in h.get_slice(key).get_shape():
                        n *= d
                    total += n
        return total


def load_step_tensors(model, path: Path) -> None:
    """Copy a training checkpoint's trainable tensors (training/checkpoint.py: every trainable
    parameter by name) into `model`, a run's saved state loaded by its method: that gives the
    structure and the tensors that never train (KnowHiRA's σ_norm, KaSA's truncated W0, ...), the
    checkpoint the values of the step. A name or shape that does not fit is an error naming the file."""
    import torch
    from safetensors.torch import load_file

    try:
        saved = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise BadInput(f"{path}: cannot be read ({type(e).__name__}; damaged or truncated?)") from None
    params = dict(model.named_parameters())
    missing = sorted(saved.keys() - params.keys())
    if missing:
        raise BadInput(f"{path}: {missing[0]} is no parameter of the run's model"
                       f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}")
    with torch.no_grad():
        for name, value in saved.items():
            if tuple(value.shape) != tuple(params[name].shape):
                raise BadInput(f"{path}: {name} has shape {tuple(value.shape)}, the model's is "
                               f"{tuple(params[name].shape)}")
            params[name].copy_(value)


def run_state(path: Path, adapter: str) -> tuple[Path, Path | None, str]:
    """(the saved folder the method loads, the step checkpoint folder or None, the state's name) of
    `adapter` (best, final, step_N) in a run folder; FileNotFoundError saying what is missing."""
    if adapter == "best":
        saved_dir = saved_dir_of(path)  # best/, else final/ (a run that kept no best/)
        if not saved_dir.is_dir():
            raise BadInput(f"{path} has no trained adapter (best/ or final/)")
        return saved_dir, None, saved_dir.name
    if adapter == "final":
        if not (path / "final").is_dir():
            raise BadInput(f"--adapter final: {path / 'final'} not found (the run has not finished)")
        return path / "final", None, "final"
    step_dir = path / "checkpoints" / f"step_{int(adapter[len('step_'):]):06d}"
    if not (step_dir / "trainable.safetensors").is_file():
        kept = sorted(p.name for p in (path / "checkpoints").glob("step_*") if (p / "trainable.safetensors").is_file())
        raise BadInput(f"--adapter {adapter}: no checkpoint {step_dir} (kept: {', '.join(kept) or 'none'})")
    structure = saved_dir_of(path)  # the method's saved layout; the step's tensors replace its values
    if not structure.is_dir():
        raise BadInput(f"--adapter {adapter}: {path} has neither best/ nor final/, which give the "
                       "adapter's structure")
    return structure, step_dir, adapter


def open_checkpoint(ckpt, base: ModelOptions | None = None, adapter: str = "best") -> Checkpoint:
    """A run folder (its args.json names method and base; `adapter` picks best/ (else final/), final/
    or the checkpoint of step N) or a stock peft adapter folder (HiRA, LoRA, DoRA, IA3) on the base
    model `base`."""
    from models.methods import get_method, method_for_peft_config

    path = Path(ckpt)
    if checkpoint_kind(path) == "run":
        saved = run_args(path, "--ckpt")
        saved_dir, step_dir, name = run_state(path, adapter)
        opts = ModelOptions(model_name=saved["model_name"],
                            **{k: saved[k] for k in ("gguf_file", "load_bit", "attn_implementation") if k in saved})
        return Checkpoint(path, "run", get_method(saved["peft_type"]), saved_dir, opts, run_args=saved,
                          adapter=name, step_dir=step_dir)
    if base is None:
        raise BadInput(f"--ckpt {ckpt} is a peft adapter: name its base model with --model_name")
    config = peft_adapter_config(path)
    method = method_for_peft_config(config)  # a peft type no method reads is named first
    if not (path / PEFT_WEIGHTS).is_file():  # peft would torch.load a pickled adapter_model.bin (refused there)
        pickled = (path / "adapter_model.bin").is_file()
        raise BadInput(f"--ckpt {ckpt}: no {PEFT_WEIGHTS} beside its {PEFT_CONFIG}"
                       + ("; its adapter_model.bin is a pickle, which is never loaded (it can run code): convert it "
                          "to safetensors where you trust it" if pickled else ""))
    return Checkpoint(path, "peft", method, path, base, peft_config=config)


# ---- export ------------------------------------------------------------------------------------
def check_export_dir(out_dir) -> Path:
    out = Path(out_dir)
    if out.exists():
        raise BadInput(f"--export_dir {out} exists; remove it or name a new folder")
    return out


@contextmanager
def atomic_dir(out_dir):
    """Yield an empty temporary folder beside `out_dir`; on success its files are fsynced and it is
    renamed to `out_dir`, on any error it is removed (nothing half-written is left)."""
    out = check_export_dir(out_dir)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as e:  # e.g. under /proc, or a folder of another user: the place, not a temporary name
        raise BadInput(f"--export_dir {out}: no folder can be made in {out.parent} ({e.strerror or e})") from None
    try:
        mask = os.umask(0)
        os.umask(mask)
        tmp.chmod(0o777 & ~mask)  # mkdtemp's 0700 -> what mkdir would give
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as h:
                    os.fsync(h.fileno())
        fsync_dir(tmp)
        os.rename(tmp, out)  # fails rather than replace a folder that appeared meanwhile
        fsync_dir(out.parent)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        code = errno_of_safetensors_error(e)  # e.g. a full disk under save_pretrained
        if code is not None:
            raise OSError(code, os.strerror(code), str(out)) from None
        raise


def export_checkpoint(ckpt: Checkpoint, kind: str, out_dir) -> str:
    """Write `ckpt` as `kind` ('peft' or 'merged') into the new folder `out_dir`; returns a line
    saying what was written."""
    from models.methods.capabilities import Mergeable, peft_exporter

    if kind not in EXPORT_KINDS:
        raise BadInput(f"--export must be one of {', '.join(EXPORT_KINDS)}, got {kind!r}")
    exporter = peft_exporter(ckpt.method) if kind == "peft" else None  # refused before OUT is made
    if kind == "merged" and not isinstance(ckpt.method, Mergeable):
        raise BadInput(f"{ckpt.method.name} cannot be merged into its base model; use --export peft")
    with atomic_dir(out_dir) as tmp:
        if exporter is not None:
            what = exporter.export_peft(tmp, saved_dir=ckpt.saved_dir, base_model_name=ckpt.base_model_name,
                                        load_model=lambda: ckpt.load()[0])
        else:
            from models.adapter import save_plain_model

            model, tokenizer = ckpt.load()
            model = ckpt.method.merge_and_unload(model)
            save_plain_model(model, tokenizer, tmp)
            what = f"plain Hugging Face model, {ckpt.method.name} merged into {ckpt.base_model_name}"
    return f"wrote {out_dir}: {what}"
