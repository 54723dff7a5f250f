"""Rebuild each adapted layer's update ΔW (out x in, float32), one layer at a time.

How ΔW is formed is method-specific and lives in each method's file (its Analysable capability,
models/methods/capabilities.py: `deltas`): s · W0 ⊙ (B M A)
for the Hadamard family, (α/r) ΔU diag(Δσ) ΔVᵀ on the truncated W0' for KaSA, scaling · B A for LoRA
and W_merged − W0 of a float64 copy for DoRA/IA3 (peft's own merge), W_trained − W0 for fft. This
module selects the layers and adds what is computed the same way for every method.
"""
from analysis.adapter_stats import pearson
from models.methods import Analysable, get_method
from utils.errors import BadInput


def analysable(method: str) -> Analysable:
    """The registered method `method`, which must have the Analysable capability."""
    impl = get_method(method)
    if not isinstance(impl, Analysable):
        raise BadInput(f"method {method!r} has no adapter analysis (no Analysable capability)")
    return impl


def layer_modules(model, method: str, targets=None) -> dict:
    """Adapted layers by (base-model) module name, in model order."""
    return analysable(method).layer_modules(model, targets)


def select_layers(names: list[str], max_layers: int | None) -> list[str]:
    """All names, or `max_layers` of them evenly spaced over the model order (first and last kept)."""
    if not max_layers or max_layers >= len(names):
        return list(names)
    if max_layers == 1:
        return [names[len(names) // 2]]
    step = (len(names) - 1) / (max_layers - 1)
    return [names[round(i * step)] for i in range(max_layers)]


def iter_deltas(modules: dict, method: str, names: list[str], trained_dir=None):
    """Yield one LayerDelta per name (the caller drops each before the next is built); where a
    method reports per-rank gates and σ_norm, their correlation is added."""
    for delta in analysable(method).deltas(modules, names, trained_dir):
        if "gate" in delta.vectors and "sigma_norm" in delta.vectors:
            delta.extra["gate_sigma_corr"] = pearson(delta.vectors["gate"], delta.vectors["sigma_norm"])
        yield delta
