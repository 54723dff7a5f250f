"""Every method behind one switch (`--peft_type`): build it, name its regulariser, save and load it.

- knowhira, hira, hira_sb, kasa: written here (models/hadamard.py, models/kasa.py), saved as
  adapter_model.safetensors + adapter_config.json by models/adapter.py.
- lora, dora, ia3: the `peft` library (LoraConfig, LoraConfig(use_dora=True), IA3Config), saved in
  peft's own adapter format.
- fft: full fine-tuning of every parameter, embeddings and norms included (the LLM-Adapters
  baseline); the model itself is saved (save_pretrained).
"""
import os
from pathlib import Path

from torch import nn

from models.adapter import (PEFT_TYPES, AdapterConfig, add_adapters, load_adapter, regularizer,
                            save_adapter)
from models.dist import gather_state, is_sharded

PEFT_LIBRARY = ("lora", "dora", "ia3")
METHODS = ("knowhira", "hira", "hira_sb", "kasa", "lora", "dora", "ia3", "fft")


def peft_library_config(method: str, r: int, lora_alpha: float, lora_dropout: float, targets,
                        model_type: str):
    """The peft config for lora / dora / ia3 on the given target modules."""
    from peft import IA3Config, LoraConfig
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING as FF

    if method in ("lora", "dora"):
        return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                          target_modules=targets, use_dora=method == "dora", task_type="CAUSAL_LM")
    if isinstance(targets, str):
        raise ValueError("ia3 needs a list of target module names (its feed-forward subset is "
                         "taken from peft's per-architecture mapping)")
    # a target is feed-forward if it names one of peft's entries (e.g. gpt2's "mlp.c_proj") or
    # a more specific path ending in one ("h.0.mlp.c_proj", "mlp.down_proj")
    feedforward = [t for t in targets
                   if any(t == f or t.endswith("." + f) for f in FF.get(model_type, []))]
    return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type="CAUSAL_LM")


def build(model: nn.Module, method: str, adapter_cfg: AdapterConfig | None = None,
          peft_cfg=None):
    """Make `model` trainable for `method`.

    Returns (model, save(model, dir, write), regulariser): the regulariser is (fn(model), weight)
    or None (models.adapter.regularizer). `save` is called by every rank (under FSDP2 gathering
    the whole tensors is collective) and writes only where `write` is true. Our methods take an
    AdapterConfig, peft's their own config, fft neither.
    """
    if method in PEFT_TYPES:
        add_adapters(model, adapter_cfg)
        return model, lambda m, d, write=True: save_adapter(m, adapter_cfg, d, write), \
            regularizer(adapter_cfg)
    if method in PEFT_LIBRARY:
        from peft import get_peft_model

        return get_peft_model(model, peft_cfg), save_peft_model, None
    if method == "fft":
        for p in model.parameters():
            p.requires_grad_(True)
        return model, save_full_model, None
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def save_peft_model(model: nn.Module, out_dir, write: bool = True) -> None:
    """lora / dora / ia3 in peft's format; under FSDP2 from the gathered trainable tensors."""
    state = None
    if is_sharded(model):
        state = gather_state(((n, p) for n, p in model.named_parameters() if p.requires_grad), write)
    if write:
        model.save_pretrained(str(out_dir), state_dict=state)


def save_full_model(model: nn.Module, out_dir, write: bool = True) -> None:
    """fft: every weight to model.safetensors (+ config.json), a tied weight once under its first
    name. Not save_pretrained, which refuses models loaded from GGUF. Under FSDP2 the whole
    weights are gathered one tensor at a time onto the writing rank's CPU."""
    from safetensors.torch import save_file

    param_id = {n: id(p) for n, p in model.named_parameters(remove_duplicate=False)}
    seen, items = set(), []
    for name, t in model.state_dict().items():
        if name in param_id:
            if param_id[name] in seen:
                continue  # tied to a parameter already stored (e.g. lm_head = embeddings)
            seen.add(param_id[name])
        items.append((name, t))
    state = gather_state(items, write)
    if not write:
        return
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".model.safetensors.tmp"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
    os.replace(tmp, out_dir / "model.safetensors")
    model.config.to_json_file(str(out_dir / "config.json"))


def load_trained(model: nn.Module, method: str, saved_dir) -> nn.Module:
    """Put a trained adapter (or, for fft, trained weights) from `saved_dir` onto `model`."""
    saved_dir = Path(saved_dir)
    if method in PEFT_TYPES:
        load_adapter(model, saved_dir)
        return model
    if method in PEFT_LIBRARY:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(saved_dir))
    if method == "fft":
        from safetensors.torch import load_file

        state = {}
        for f in sorted(saved_dir.glob("*.safetensors")):
            state.update(load_file(str(f)))
        missing, unexpected = model.load_state_dict(state, strict=False)
        params = dict(model.named_parameters(remove_duplicate=False))
        loaded = {id(params[k]) for k in state if k in params}
        missing = [k for k in missing if k not in params or id(params[k]) not in loaded]  # tied
        if missing or unexpected:
            raise ValueError(f"{saved_dir} does not fit the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        return model
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
