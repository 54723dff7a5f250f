"""Shared adapter mechanics for the layers written in this repository: target matching, injection,
save/load of the adapter tensors, merge and export. No method-specific code: each method's layer
and initialisation live in its method file (models/methods/), which calls these.
"""
import re
from pathlib import Path

import torch
from torch import nn

from models.compat import adapter_file, remove_old_adapter, unsampled_fingerprint
from models.files import ADAPTER_CONFIG, ADAPTER_WEIGHTS, PEFT_CONFIG
from models.layers import MergeableAdapter, _is_conv1d, base_weight
from models.targets import default_targets
from utils.atomic import atomic_save_safetensors, atomic_write_json
from utils.dist import full
from utils.errors import BadInput
from utils.runs import read_json



# ---- target matching ---------------------------------------------------------------------------
def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or _is_conv1d(m)


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
            raise BadInput(f"target regex {target_modules!r} matches no linear layer; "
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
            raise BadInput("; ".join(problems) + f"; available linear module names: {available}")
        found = [n for n in linear if any(n == t or n.endswith("." + t) for t in target_modules)]
    if not found:
        raise BadInput(f"target_modules={target_modules!r} selects no layer; available: {available}")
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
# the base-weight fingerprint saved with every adapted layer: ||W0||_F ("w0_fro") and W0's entries at
# W0_SAMPLES evenly spaced flat positions ("w0_sample"). The norm alone cannot tell sibling checkpoints
# apart (a base model and its Instruct fine-tune, or a permuted or sign-flipped copy, have nearly or
# exactly the same norm); their entries differ. Loading the adapter's own base gives the same entries
# up to the rounding of where they were computed (KaSA's truncated W0: a matmul on another device).
FINGERPRINT = ("w0_fro", "w0_sample")
W0_SAMPLES = 64
SAMPLE_RTOL = 1e-4  # of the sample's largest magnitude: far above rounding, far below a fine-tune's changes


def w0_sample(w0: torch.Tensor) -> torch.Tensor:
    """W0's entries (fp32) at min(W0_SAMPLES, numel) evenly spaced positions of its flat view, first and
    last included (integer arithmetic: the same positions on every machine)."""
    flat = w0.detach().reshape(-1)
    k = min(W0_SAMPLES, flat.numel())
    idx = torch.arange(k, dtype=torch.int64, device=flat.device) * (flat.numel() - 1) // max(k - 1, 1)
    return flat[idx].float()


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every layer's `saved_tensors` (factors, gates, cached σ_norm, KaSA's dropped components) plus
    its base-weight fingerprint (FINGERPRINT, of the frozen base as the adapter sees it)."""
    state = {}
    for name, layer in adapter_layers(model).items():  # full(): whole tensors under FSDP2
        for key in layer.saved_tensors:
            state[f"{name}.{key}"] = full(getattr(layer, key).detach()).float()
        w0 = full(base_weight(layer.base).detach())
        state[f"{name}.w0_fro"] = w0.float().norm().reshape(1)
        state[f"{name}.w0_sample"] = w0_sample(w0)
    return state


def save_adapter(model: nn.Module, config: dict, out_dir, write: bool = True) -> None:
    """Write `knowhira_adapter.safetensors` + `knowhira_adapter.json` (`config`: the method's name
    under "peft_type" and its options), each atomically, no pickle. Under FSDP2 every rank calls this
    (the gather is collective) and only `write=True` writes. Files of the old names left by a resumed
    old run are removed, so the folder holds one adapter (models/compat.py)."""
    state = adapter_state_dict(model)
    if not write:
        return
    out_dir = Path(out_dir)
    atomic_save_safetensors(state, out_dir / ADAPTER_WEIGHTS, metadata={"format": "knowhira"})
    atomic_write_json(out_dir / ADAPTER_CONFIG, config)
    remove_old_adapter(out_dir, config.get("peft_type"))


def read_adapter_config(adapter_dir) -> dict:
    """The saved adapter config (of the current file name, or the old one: models/compat.py)."""
    path = adapter_file(adapter_dir, ADAPTER_CONFIG)
    if not path.is_file():
        raise BadInput(f"no {ADAPTER_CONFIG} (or {PEFT_CONFIG}) in {adapter_dir}")
    return read_json(path, "the adapter's options")


def load_checked(path) -> dict[str, torch.Tensor]:
    """The tensors of the safetensors file `path`; an error naming the file when it is missing,
    cannot be read (damaged, truncated) or holds NaN or inf (training never saves such values)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise BadInput(f"{path}: not found")
    try:
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for damaged files
        why = " ".join(str(e).split())[:160]
        raise BadInput(f"{path}: cannot be read ({type(e).__name__}: {why}; damaged or truncated?)") from None
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise BadInput(f"{path}: non-finite values (NaN or inf) in {bad[0]}"
                       f"{f' and {len(bad) - 1} more tensors' if len(bad) > 1 else ''}; damaged?")
    return tensors


def load_adapter_tensors(model: nn.Module, adapter_dir) -> None:
    """Restore every saved tensor into the injected layers (built with compute=False).

    Checks each layer's base weight against the fingerprint saved at training time (FINGERPRINT: the
    sampled entries within SAMPLE_RTOL, ||W0||_F within 1%), so an adapter loaded onto the wrong base
    model, a sibling checkpoint of the right one included, fails loudly instead of evaluating garbage.
    Adapters saved before the sampled entries were recorded are checked by ||W0||_F alone (a note says
    so; models/compat.py).
    """
    path = adapter_file(adapter_dir, ADAPTER_WEIGHTS)
    saved = load_checked(path)
    expected = unsampled_fingerprint(saved, adapter_state_dict(model), path)
    sampled = any(k.endswith(".w0_sample") for k in expected)  # else ||W0||_F alone
    missing, unexpected = expected.keys() - saved.keys(), saved.keys() - expected.keys()
    if missing or unexpected:
        raise BadInput(f"adapter in {adapter_dir} does not fit this model: "
                       f"missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]}")
    layers = adapter_layers(model)
    for key, value in saved.items():  # e.g. an edited rank in the config: one line, not a copy_ traceback
        if tuple(value.shape) != tuple(expected[key].shape):
            raise BadInput(f"{adapter_file(adapter_dir, ADAPTER_WEIGHTS)}: {key} has shape {tuple(value.shape)}, "
                           f"the layer built from {adapter_file(adapter_dir, ADAPTER_CONFIG)} has "
                           f"{tuple(expected[key].shape)} (an edited config, or another model?)")
    with torch.no_grad():
        for key, value in saved.items():
            name, _, attr = key.rpartition(".")
            if attr not in FINGERPRINT:
                getattr(layers[name], attr).copy_(value)
        for layer in layers.values():
            layer.after_load()  # e.g. KaSA: W0' = W0 − U_r S_r V_rᵀ from the saved components
        for name, layer in layers.items():
            w0 = base_weight(layer.base)
            now, then = w0.float().norm().item(), saved[f"{name}.w0_fro"].item()
            if abs(now - then) > 1e-2 * then:
                raise BadInput(f"base weight of {name} differs from the one the adapter was "
                               f"trained on (||W0||_F {now:.4g} vs {then:.4g}): wrong base model?")
            if sampled:
                sample = saved[f"{name}.w0_sample"].to(w0.device)
                off = (w0_sample(w0) - sample).abs().max().item()
                if off > SAMPLE_RTOL * sample.abs().max().item():
                    raise BadInput(f"base weight of {name} differs from the one the adapter was trained on "
                                   f"(its sampled entries by up to {off:.3g}, with ||W0||_F {now:.4g} vs "
                                   f"{then:.4g}): wrong base model (another checkpoint of it, e.g. base vs "
                                   "Instruct)?")


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


def save_plain_model(model: nn.Module, tokenizer, out_dir) -> None:
    """Write a plain Hugging Face model folder: weights (safetensors), config.json,
    generation_config.json and the tokenizer's files.

    A model loaded from GGUF carries transformers' GGUF marks (its `hf_quantizer`,
    `config.quantization_config`), and save_pretrained refuses it; but its weights were dequantised
    on load and are plain tensors, so the marks are dropped here and the folder is an ordinary
    model that `from_pretrained` loads without the GGUF file. Other quantisations are refused.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quant = getattr(quantizer.quantization_config, "quant_method", None)
        quant = getattr(quant, "value", quant)
        if quant != "gguf":
            raise BadInput(f"cannot write a plain model from weights quantized with {quant}")
        model.hf_quantizer = None
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    if not getattr(model.config, "architectures", None):  # GGUF configs have none
        model.config.architectures = [type(model).__name__]
    model.save_pretrained(str(out_dir), safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out_dir))


def export_merged(model: nn.Module, tokenizer, out_dir) -> None:
    """Merge in place and write a plain Hugging Face model directory (safetensors).

    `AutoModelForCausalLM.from_pretrained(out_dir)` loads it with no project code. This consumes
    the adapted model (its adapters are merged and removed). For any method, from a run folder:
    `models.export.export_checkpoint` (`train_knowhira.py --ckpt RUN --export merged`).
    """
    save_plain_model(merge_and_unload(model), tokenizer, out_dir)
