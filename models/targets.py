"""The default target modules per architecture (`--target_modules` unset). A leaf module: the layers,
the methods and the loader all read it, and it imports nothing of the project but the leaf utils/errors.py."""
from utils.errors import BadInput


# Default targets per architecture: attention q, k, v plus the MLP's up and down projections
# (HiRA's LLaMA setting). Module names differ by family, so they are spelled out per model_type.
DEFAULT_TARGETS = {
    "llama": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "up_proj", "down_proj"],
    "gpt_neo": ["q_proj", "k_proj", "v_proj", "c_fc", "mlp.c_proj"],
    "gpt2": ["c_attn", "c_fc", "mlp.c_proj"],
    "opt": ["q_proj", "k_proj", "v_proj", "fc1", "fc2"],
}


def default_targets(model_type: str) -> list[str]:
    if model_type not in DEFAULT_TARGETS:
        raise BadInput(f"no default target_modules for model_type {model_type!r}; pass "
                       f"--target_modules (known defaults: {', '.join(DEFAULT_TARGETS)})")
    return list(DEFAULT_TARGETS[model_type])  # a copy: the caller records (and may change) it


def resolve_targets(target_modules, model_type: str | None):
    """The targets a method is built with and records: the given ones, or for None (`--target_modules`
    unset) the architecture's default list. Methods write the result into their config at build time
    (as peft's `_prepare_adapter_config` does), so args.json and the adapter config name the layers the
    run adapted and a saved run loads with that list, whatever this table says later. Runs made before
    that recorded null: they are resolved with today's table (what they always were; models/compat.py)."""
    return default_targets(model_type) if target_modules is None else target_modules
