"""Compatibility with older run folders and with the original KnowHiRA commands, in one place: each rule
below says what older thing is still read or accepted, since when, and the function or constant here
that applies it (older folders are read as they are; a resumed run writes the current form).

Older run folders
  1. Adapter file names (runs made before 2026-11-24, when our adapters stopped using peft's names):
     adapter_config.json / adapter_model.safetensors holding our lowercase method name are read when
     knowhira_adapter.json / .safetensors are absent (`adapter_file`, `has_adapter_config`); a resumed
     old run that saves removes them, so its folder holds one adapter (`remove_old_adapter`).
  2. Adapter config keys (runs made before the method redesign of 2026-11-24): the layer's own names
     r, scale, dropout are read as r_ab, hira_scale, adapter_dropout (`RENAMED_KEYS`,
     `upgrade_adapter_config`), and the old AdapterConfig's fields of every method are accepted
     (`check_adapter_keys`).
  3. target_modules null (args.json, adapter config and checkpoint state of runs made before
     2026-12-05, when the resolved default list started to be recorded at build time): null stands for
     today's default list of the architecture (`recorded_config` for a checkpoint's record,
     `resume_targets` for a list given with --resume; building resolves null the same way,
     models/targets.resolve_targets).
  4. The base-weight fingerprint (adapters saved before 2026-12-05 have no sampled entries of W0):
     checked by ||W0||_F alone, with a note saying so (`unsampled_fingerprint`).

The original KnowHiRA commands (tests/test_original_readme.py, tests/test_legacy_commands.py)
  5. --lora_dropout is --adapter_dropout (since 2026-11-23, when the option became every method's;
     `FLAG_ALIASES`).
  6. --init_ab 'kaiming,zero' (the original 'A init,B init' pair) is 'kaiming' (since the redesign of
     2026-11-24; `parse_init_ab`).
  7. --eval_strategy is accepted with --ckpt (the original evaluation command passes it; since the
     redesign of 2026-11-24; `ORIGINAL_EVAL_FLAGS`).
  8. The original scripts stay as thin command lines at the top level: download_all_eval_datasets.py
     (with the original short task names siqa, hellas, winog, arce, arcc, obqa: data/tasks.py ALIASES,
     which --dataset reads too), analyze_results.py with no argument (./runs), run_fixed_evaluation.sh.
"""
import sys
from pathlib import Path

from models.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_CONFIG, PEFT_WEIGHTS
from models.targets import default_targets
from utils.errors import BadInput
from utils.runs import read_json

# ---- 1. adapter file names ---------------------------------------------------------------------------
# runs made before 2026-11-24 used peft's names, with our lowercase method names
LEGACY_WEIGHTS, LEGACY_CONFIG = PEFT_WEIGHTS, PEFT_CONFIG
_OLD_NAME = {ADAPTER_CONFIG: LEGACY_CONFIG, ADAPTER_WEIGHTS: LEGACY_WEIGHTS}


def adapter_file(adapter_dir, name: str) -> Path:
    """`adapter_dir`/name, or the file of the old name when only that exists. name: ADAPTER_CONFIG or
    ADAPTER_WEIGHTS."""
    path = Path(adapter_dir) / name
    legacy = Path(adapter_dir) / _OLD_NAME[name]
    return legacy if not path.is_file() and legacy.is_file() else path


def has_adapter_config(folder) -> bool:
    """Whether `folder` holds an adapter config of this project, of the current or the old name (an
    old-named file may also be a stock peft adapter's: ask models/export.peft_adapter_config first)."""
    return (Path(folder) / ADAPTER_CONFIG).is_file() or (Path(folder) / LEGACY_CONFIG).is_file()


def remove_old_adapter(out_dir, peft_type: str) -> None:
    """After saving an adapter into `out_dir`: the files of the old names, when they hold our own old
    adapter of the same method (a peft adapter has an uppercase peft_type), are removed."""
    legacy = Path(out_dir) / LEGACY_CONFIG
    if legacy.is_file() and _old_adapter_type(legacy) == peft_type:
        legacy.unlink()
        (Path(out_dir) / LEGACY_WEIGHTS).unlink(missing_ok=True)


def _old_adapter_type(path) -> str | None:
    """The peft_type of an adapter config file of the old name, None when it cannot be read."""
    try:
        return read_json(path, "options").get("peft_type")
    except (OSError, ValueError):
        return None


# ---- 2. adapter config keys ----------------------------------------------------------------------------
# the saved adapter config of runs made before the redesign used the layer's own names
RENAMED_KEYS = {"r": "r_ab", "scale": "hira_scale", "dropout": "adapter_dropout"}


def upgrade_adapter_config(values: dict) -> dict:
    """A saved adapter config with the renamed keys under today's names."""
    return {RENAMED_KEYS.get(k, k): v for k, v in values.items()}


def check_adapter_keys(saved: dict, path, method: str) -> None:
    """A key of the saved adapter config that is no option here is an error naming it and the file
    (the old AdapterConfig held every method's fields: those, and its renamed ones, are read)."""
    from dataclasses import fields

    from models.methods.registry import REGISTRY

    known = {"peft_type", *RENAMED_KEYS, *(f.name for m in REGISTRY.values() for f in fields(m.config_cls))}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise BadInput(f"{path}: unknown key {unknown[0]!r}{f' (and {len(unknown) - 1} more)' if len(unknown) > 1 else ''}"
                       f": not an option of {method} or of any method here")


# ---- 3. target_modules null ----------------------------------------------------------------------------
def recorded_config(recorded: dict, given: dict, model_type: str | None) -> dict:
    """A checkpoint's recorded configuration as the run's is now compared with it: a checkpoint of a run
    made before targets were recorded holds `target_modules: null` (the default then), which stands for
    today's default of `model_type` when the run's configuration has a list."""
    if recorded.get("target_modules", "") is None and given.get("target_modules") is not None:
        try:
            return {**recorded, "target_modules": default_targets(model_type)}
        except BadInput:  # no default for this architecture: the run cannot have been built with null
            return recorded
    return recorded


def resume_targets(saved: dict, given: dict) -> dict:
    """{"target_modules": the given list} when a run's args.json records null (made before the resolved
    targets were recorded) and --resume is given a list: that list is taken (the checkpoint's record
    checks it against the default, `recorded_config`); else {}."""
    if "target_modules" in saved and saved["target_modules"] is None and "target_modules" in given:
        return {"target_modules": given["target_modules"]}
    return {}


# ---- 4. the base-weight fingerprint -------------------------------------------------------------------
def unsampled_fingerprint(saved: dict, expected: dict, path) -> dict:
    """`expected` (the fingerprint and tensors a loaded adapter must hold) less the sampled entries of W0
    when the saved adapter predates them (a note says the check is weaker then)."""
    if any(k.endswith(".w0_sample") for k in saved):
        return expected
    print(f"note: {path} predates the base-weight sample; the base model is checked by ||W0||_F only "
          "(within 1%), which a sibling checkpoint of the same model can pass", file=sys.stderr)
    return {k: v for k, v in expected.items() if not k.endswith(".w0_sample")}


# ---- 5.-7. the original command lines -------------------------------------------------------------------
FLAG_ALIASES = {"adapter_dropout": ("--lora_dropout",)}  # option name -> the original flag names
ORIGINAL_EVAL_FLAGS = ("eval_strategy",)  # training flags the original evaluation command passes with --ckpt


def parse_init_ab(text: str) -> str:
    """'spectrum' | 'kaiming', or the original project's 'A init,B init' pair ('kaiming,zero'):
    B always starts at zero, so that the adapted model equals the base model at step 0."""
    a_init, _, b_init = text.partition(",")
    if b_init and b_init.strip() != "zero":
        raise BadInput(f"B must start at zero (the model equals the base at step 0); got B init {b_init!r}")
    return a_init.strip()
