"""Shared adapter mechanics for the layers written in this repository: target matching, injection,
save/load of the adapter tensors, merge and export. No method-specific code: each method's layer
and initialisation live in its method file (models/methods/), which calls these.
"""
import json
import re
from pathlib import Path

import torch
from torch import nn

from models.hadamard import MergeableAdapter, base_weight
from utils.atomic import atomic_save_safetensors, atomic_write_json
from utils.dist import full

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


# ---- target matching ---------------------------------------------------------------------------
def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def linear_module_names(model: nn.Module) -> list[str]:
    """Full names of the linear layers an adapter may target (the output head excluded)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [n for n, m in model.named_modules() if _is_linear(m) and m is not head
            and not isinstance(m, MergeableAdapter)]


def find_targets(model: nn.Module, target_modules) -> list[str]:
    """Names of the layers selected by `target_modules`; a clear error for anything unmatched."""
    linear = linear_module_names(model)
    available = ", ".join(sorted({n.rsplit(".", 1)[-1] for n in linear}))
    if target_modules == "all-linear":
        found = linear
    elif isinstance(target_modules, str):
        pattern = re.compile(target_modules)
        found = [n for n in linear if pattern.fullmatch(n)]
        if not found:
            raise ValueError(f"target regex {target_modules!r} matches no linear layer; "
                             f"available linear module names: {available}")
    else:
        all_names = dict(model.named_modules())
        missing, not_linear = [], []
        for t in target_modules:
            hits = [n for n in all_names if n == t or n.endswith("." + t)]
            if not hits:
                missing.append(t)
            elif not any(n in linear for n in hits):
                not_linear.append(t)
        if missing or not_linear:
            problems = []
            if missing:
                problems.append(f"target module(s) {missing} match no module in "
                                f"{type(model).__name__}")
            if not_linear:
                problems.append(f"target module(s) {not_linear} are not linear layers")
            raise ValueError("; ".join(problems) + f"; available linear module names: {available}")
        found = [n for n in linear if any(n == t or n.endswith("." + t) for t in target_modules)]
    if not found:
        raise ValueError(f"target_modules={target_modules!r} selects no layer; available: {available}")
    return found


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Adapted layers by full module name (the wrapper's name, i.e. the original layer's)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, MergeableAdapter)}


# ---- injection -----------------------------------------------------------------------------
def inject(model: nn.Module, target_modules, make_layer) -> list[str]:
    """Freeze `model` and replace each target layer by make_layer(layer); returns the target names.

    Call AFTER the pretrained weights are loaded: layers that read W0 (KnowHiRA's σ_norm, KaSA's
    truncation) see the weights the model holds now, on their device.
    """
    if target_modules is None:
        from models.get_models import default_targets

        target_modules = default_targets(model.config.model_type)
    targets = find_targets(model, target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    modules = dict(model.named_modules())
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child, make_layer(modules[name]))
    return targets


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- save / load ---------------------------------------------------------------------------
def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every layer's `saved_tensors` (factors, gates, cached σ_norm, KaSA's dropped components) plus
    its ||W0||_F fingerprint (of the frozen base as the adapter sees it)."""
    state = {}
    for name, layer in adapter_layers(model).items():  # full(): whole tensors under FSDP2
        for key in layer.saved_tensors:
            state[f"{name}.{key}"] = full(getattr(layer, key).detach()).float()
        state[f"{name}.w0_fro"] = full(base_weight(layer.base).detach()).float().norm().reshape(1)
    return state


def save_adapter(model: nn.Module, config: dict, out_dir, write: bool = True) -> None:
    """Write `adapter_model.safetensors` + `adapter_config.json` (`config`: the method's name under
    "peft_type" and its options), each atomically, no pickle. Under FSDP2 every rank calls this (the
    gather is collective) and only `write=True` writes."""
    state = adapter_state_dict(model)
    if not write:
        return
    out_dir = Path(out_dir)
    atomic_save_safetensors(state, out_dir / ADAPTER_WEIGHTS, metadata={"format": "knowhira"})
    atomic_write_json(out_dir / ADAPTER_CONFIG, config)


def read_adapter_config(adapter_dir) -> dict:
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {adapter_dir}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def load_adapter_tensors(model: nn.Module, adapter_dir) -> None:
    """Restore every saved tensor into the injected layers (built with compute=False).

    Checks that each layer's ||W0||_F matches the one seen at training time (rel. 1e-2), so an
    adapter loaded onto the wrong base model fails loudly instead of evaluating garbage.
    """
    from safetensors.torch import load_file

    saved = load_file(str(Path(adapter_dir) / ADAPTER_WEIGHTS))
    expected = adapter_state_dict(model)
    missing, unexpected = expected.keys() - saved.keys(), saved.keys() - expected.keys()
    if missing or unexpected:
        raise ValueError(f"adapter in {adapter_dir} does not fit this model: "
                         f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    layers = adapter_layers(model)
    with torch.no_grad():
        for key, value in saved.items():
            name, _, attr = key.rpartition(".")
            if attr != "w0_fro":
                getattr(layers[name], attr).copy_(value)
        for layer in layers.values():
            layer.after_load()  # e.g. KaSA: W0' = W0 − U_r S_r V_rᵀ from the saved components
        for name, layer in layers.items():
            now, then = base_weight(layer.base).float().norm().item(), saved[f"{name}.w0_fro"].item()
            if abs(now - then) > 1e-2 * then:
                raise ValueError(f"base weight of {name} differs from the one the adapter was "
                                 f"trained on (||W0||_F {now:.4g} vs {then:.4g}): wrong base model?")


# ---- merge / export ------------------------------------------------------------------------
def merge_adapters(model: nn.Module) -> None:
    """W0 <- W0 + s · W0 ⊙ (B M A) in every adapted layer (reversible with unmerge_adapters)."""
    for layer in adapter_layers(model).values():
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for layer in adapter_layers(model).values():
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge, then put the plain base layers back: a model with no project code left in it."""
    for name, layer in adapter_layers(model).items():
        layer.merge(keep_backup=False)  # the merged model does not need a copy of W0
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.base)
    return model


def export_merged(model: nn.Module, tokenizer, out_dir) -> None:
    """Merge in place and write a plain Hugging Face model directory (safetensors).

    `AutoModelForCausalLM.from_pretrained(out_dir)` loads it with no project code. This consumes
    the adapted model (its adapters are merged and removed).
    """
    model = merge_and_unload(model)
    for p in model.parameters():
        p.requires_grad_(True)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))
