"""Rebuild each adapted layer's update ΔW (out x in, float32), one layer at a time.

- hira / knowhira / hira_sb: HadamardLinear.delta_weight() = s · W0 ⊙ (B M A).
- kasa: KaSALinear.delta_weight() = (α/r) ΔU diag(Δσ) ΔVᵀ, added to the TRUNCATED base W0'. The
  pretrained W0 (for the knowledge subspace) is W0' + U_r S_r V_rᵀ from the saved dropped components.
- lora: peft's get_delta_weight(adapter) = scaling · B A, computed on a float64 copy of the layer (the
  exact low-rank product; no W_merged − W0 cancellation).
- dora, ia3 and any other peft layer: W_merged − W0 from merging a float64 copy of that one layer
  (peft's own merge), so the DoRA magnitude rescaling is included. In float64 the cancellation error
  (~1e-16 ‖W0‖) is far below the float32 rank tolerance.
- fft: W_trained − W0 in float64 for the target layers (args.json target_modules, else
  models.get_models.default_targets), reading the trained tensors lazily from the saved safetensors.
"""
import copy
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.adapter import PEFT_TYPES, adapter_layers, find_targets
from models.hadamard import HadamardLinear, _is_conv1d, base_weight
from models.kasa import KaSALinear

PEFT_PREFIX = "base_model.model."


@dataclass
class LayerDelta:
    name: str
    dw: torch.Tensor  # ΔW, out x in, float32
    w0: torch.Tensor  # the PRETRAINED W0, out x in, float32
    base: torch.Tensor  # the weight ΔW is added to (W0; KaSA: the truncated W0'), float32
    r: int | None
    extra: dict = field(default_factory=dict)  # scalar method-specific numbers
    vectors: dict = field(default_factory=dict)  # per-rank vectors (KnowHiRA: sigma_norm, gate, core)


def _peft_layers(model: nn.Module) -> dict[str, nn.Module]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {n[len(PEFT_PREFIX):] if n.startswith(PEFT_PREFIX) else n: m
            for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)}


def layer_modules(model: nn.Module, method: str, targets=None) -> dict[str, nn.Module]:
    """Adapted layers by (base-model) module name, in model order. fft: the `targets` linear layers."""
    if method in PEFT_TYPES:
        return adapter_layers(model)
    if method == "fft":
        modules = dict(model.named_modules())
        return {n: modules[n] for n in find_targets(model, targets)}
    return _peft_layers(model)


def select_layers(names: list[str], max_layers: int | None) -> list[str]:
    """All names, or `max_layers` of them evenly spaced over the model order (first and last kept)."""
    if not max_layers or max_layers >= len(names):
        return list(names)
    if max_layers == 1:
        return [names[len(names) // 2]]
    step = (len(names) - 1) / (max_layers - 1)
    return [names[round(i * step)] for i in range(max_layers)]


@torch.no_grad()
def _ours(name: str, layer: nn.Module) -> LayerDelta:
    w = base_weight(layer.base).detach()
    dw = layer.delta_weight().detach().float()
    if isinstance(layer, KaSALinear):
        dropped = layer.dropped_weight().double()
        w0 = w.double() + dropped  # pretrained W0 = W0' + U_r S_r V_rᵀ
        w0_fro = w0.norm().item()
        extra = {"kasa_dropped_components": layer.r,
                 "kasa_dropped_rel": dropped.norm().item() / w0_fro,  # ‖U_r S_r V_rᵀ‖ / ‖W0‖
                 # the total change of the layer against the PRETRAINED weight: W0' + ΔW − W0
                 "rel_update_vs_pretrained": (dw.double() - dropped).norm().item() / w0_fro}
        return LayerDelta(name, dw, w0.float(), w.float(), layer.r, extra)
    w0 = w.float()
    delta = LayerDelta(name, dw, w0, w0, layer.r)
    if isinstance(layer, HadamardLinear) and layer.variant == "knowhira":
        sigma = layer.sigma_norm.detach().float().cpu()
        core = layer.core_diag().detach().float().cpu()
        delta.vectors = {"sigma_norm": sigma, "core": core}
        delta.extra = {"sigma_norm_mean": sigma.mean().item(), "core_mean": core.mean().item(),
                       "core_min": core.min().item(), "core_max": core.max().item()}
        if layer.adaptive_gating:  # without gating sigmoid(g) is not part of the model
            from analysis.adapter_stats import pearson

            gate = torch.sigmoid(layer.gate.detach().float()).cpu()
            delta.vectors["gate"] = gate
            delta.extra.update(gate_mean=gate.mean().item(), gate_min=gate.min().item(),
                               gate_max=gate.max().item(), gate_sigma_corr=pearson(gate, sigma))
    return delta


@torch.no_grad()
def _peft(name: str, layer: nn.Module) -> LayerDelta:
    adapter = layer.active_adapters[0]
    base = layer.get_base_layer()
    w0 = base_weight(base).detach()
    cp = copy.deepcopy(layer).double()  # one layer, float64: merge without cancellation trouble
    is_plain_lora = hasattr(cp, "lora_A") and adapter not in getattr(cp, "lora_variant", {})
    if is_plain_lora:
        d = cp.get_delta_weight(adapter)  # scaling · B A in the base weight's layout
        dw = d.t() if _is_conv1d(base) else d
    else:
        cp.merge(adapter_names=[adapter])
        dw = base_weight(cp.get_base_layer()) - w0.double()
    r = getattr(layer, "r", {}).get(adapter) if isinstance(getattr(layer, "r", None), dict) else None
    delta = LayerDelta(name, dw.float(), w0.float(), w0.float(), r)
    del cp
    return delta


class SavedTensors:
    """Lazy access to the tensors of the *.safetensors files in a folder (fft's saved model)."""

    def __init__(self, folder):
        from safetensors import safe_open

        self.files = {}
        for f in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as h:
                for key in h.keys():
                    self.files[key] = f
        if not self.files:
            raise FileNotFoundError(f"no *.safetensors in {folder}")

    def get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        if key not in self.files:
            raise KeyError(f"{key} is not in the saved model")
        with safe_open(str(self.files[key]), framework="pt") as h:
            return h.get_tensor(key)


@torch.no_grad()
def _fft(name: str, layer: nn.Module, saved: SavedTensors) -> LayerDelta:
    w0 = base_weight(layer).detach()
    trained = saved.get(f"{name}.weight").to(w0.device)
    trained = trained.t() if _is_conv1d(layer) else trained
    dw = (trained.double() - w0.double()).float()
    return LayerDelta(name, dw, w0.float(), w0.float(), None)


def iter_deltas(modules: dict[str, nn.Module], method: str, names: list[str], trained_dir=None):
    """Yield one LayerDelta per name (the caller drops each before the next is built)."""
    saved = SavedTensors(trained_dir) if method == "fft" else None
    for name in names:
        layer = modules[name]
        if method == "fft":
            yield _fft(name, layer, saved)
        elif method in PEFT_TYPES:
            yield _ours(name, layer)
        else:
            yield _peft(name, layer)
