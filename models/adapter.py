"""Shared adapter mechanics: config, target matching, injection, save/load, merge/export.

The math of each method lives in its own module (models/hadamard.py); this file only finds the
target layers, swaps them for adapter modules, and moves adapters to and from disk.
"""
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.atomic import atomic_save_safetensors, atomic_write_json
from models.dist import full
from models.hadamard import VARIANTS, HadamardLinear, base_weight
from models.kasa import KASA_TENSORS, KaSALinear
from models.spectrum import sigma_norms, spectrum_row_scale

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
HADAMARD_TENSORS = ("hira_A", "hira_B", "gate", "sigma_norm", "hira_R")
PEFT_TYPES = VARIANTS + ("kasa",)  # the methods written in this repository
ADAPTER_MODULES = (HadamardLinear, KaSALinear)
INIT_CHOICES = ("spectrum", "kaiming")


@dataclass
class AdapterConfig:
    """Everything needed to rebuild a Hadamard-family adapter on a fresh base model."""

    peft_type: str = "knowhira"  # hira | knowhira | hira_sb | kasa
    r: int = 32
    # list -> module-name suffixes; str -> "all-linear" or a regex matched against full names
    target_modules: list[str] | str = field(default_factory=lambda: ["q_proj", "v_proj"])
    knowledge_alpha: float = 0.5  # α in M = (1 - α) I + α G_Σ
    adaptive_gating: bool = True  # G_Σ = diag(σ_norm ⊙ sigmoid(g)) (else diag(σ_norm))
    g_init: float = -1.0  # initial gate logit (< 0)
    svd_rank_ratio: float = 0.5  # k = max(r, round(ratio · min(out, in)))
    init_ab: str = "spectrum"  # A init: "spectrum" (Kaiming · f(σ)) or "kaiming"; B = 0 always
    spectrum_init_scale: float = 1.0  # τ in f_i ∝ σ_norm_i^τ
    scale: float = 1.0  # s in W = W0 + s · W0 ⊙ (B M A)
    dropout: float = 0.0  # dropout on the adapter path's input
    ortho_lambda: float = 1e-3  # λ in L = L_task + λ · mean_layers L_ortho (hira, knowhira)
    kasa_alpha: float = 16.0  # KaSA: ΔW = (α/r) · ΔU diag(Δσ) ΔVᵀ
    kasa_beta: float = 1e-4  # KaSA: β · Σ Δσ²
    kasa_gamma: float = 1e-3  # KaSA: γ · (‖ΔUᵀΔU − I‖_F + ‖ΔVᵀΔV − I‖_F)

    def validate(self) -> "AdapterConfig":
        if self.peft_type not in PEFT_TYPES:
            raise ValueError(f"unknown adapter peft_type {self.peft_type!r}; choose from {PEFT_TYPES}")
        if self.r <= 0:
            raise ValueError(f"r must be a positive integer, got {self.r}")
        if not 0.0 <= self.knowledge_alpha <= 1.0:
            raise ValueError(f"knowledge_alpha must be in [0, 1], got {self.knowledge_alpha}")
        if not 0.0 < self.svd_rank_ratio <= 1.0:
            raise ValueError(f"svd_rank_ratio must be in (0, 1], got {self.svd_rank_ratio}")
        if self.init_ab not in INIT_CHOICES:
            raise ValueError(f"init_ab must be one of {INIT_CHOICES}, got {self.init_ab!r}")
        if self.spectrum_init_scale < 0:
            raise ValueError(f"spectrum_init_scale must be >= 0, got {self.spectrum_init_scale}")
        if self.g_init >= 0:
            raise ValueError(f"g_init must be < 0 (gate starts below one half), got {self.g_init}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.ortho_lambda < 0:
            raise ValueError(f"ortho_lambda must be >= 0, got {self.ortho_lambda}")
        if self.kasa_beta < 0 or self.kasa_gamma < 0:
            raise ValueError(f"kasa_beta and kasa_gamma must be >= 0, got {self.kasa_beta}, {self.kasa_gamma}")
        if not self.target_modules:
            raise ValueError("target_modules is empty")
        return self


# ---- target matching ---------------------------------------------------------------------------
def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def linear_module_names(model: nn.Module) -> list[str]:
    """Full names of the linear layers an adapter may target (the output head excluded)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [n for n, m in model.named_modules() if _is_linear(m) and m is not head
            and not isinstance(m, ADAPTER_MODULES)]


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
    return {n: m for n, m in model.named_modules() if isinstance(m, ADAPTER_MODULES)}


def _wrap(base: nn.Module, cfg: "AdapterConfig", compute_spectrum: bool) -> nn.Module:
    if cfg.peft_type == "kasa":  # SVD truncation of the pretrained W0 happens here
        return KaSALinear(base, cfg.r, alpha=cfg.kasa_alpha, dropout=cfg.dropout,
                          compute_svd=compute_spectrum)
    return HadamardLinear(base, cfg.peft_type, cfg.r, scale=cfg.scale, dropout=cfg.dropout,
                          knowledge_alpha=cfg.knowledge_alpha, adaptive_gating=cfg.adaptive_gating,
                          g_init=cfg.g_init)


# ---- injection -----------------------------------------------------------------------------
def add_adapters(model: nn.Module, cfg: AdapterConfig, compute_spectrum: bool = True) -> list[str]:
    """Freeze `model` and wrap each target layer in a HadamardLinear; returns the target names.

    Call AFTER the pretrained weights are loaded: KnowHiRA's σ_norm (and KaSA's truncation) are
    computed here from the weights the layers hold now, on their device. `compute_spectrum=False`
    is for `load_adapter`, which restores the values cached at training time instead.
    """
    cfg.validate()
    targets = find_targets(model, cfg.target_modules)
    for p in model.parameters():
        p.requires_grad_(False)
    modules = dict(model.named_modules())
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, child,
                _wrap(modules[name], cfg, compute_spectrum))
    layers = adapter_layers(model)
    if cfg.peft_type == "knowhira" and compute_spectrum:
        sig = sigma_norms({n: base_weight(m.base) for n, m in layers.items()}, cfg.r, cfg.svd_rank_ratio)
        with torch.no_grad():
            for name, layer in layers.items():
                layer.sigma_norm.copy_(sig[name])
                if cfg.init_ab == "spectrum":  # A = Kaiming(A) scaled row-wise by f(σ)
                    layer.hira_A.mul_(spectrum_row_scale(sig[name], cfg.spectrum_init_scale)[:, None])
    return targets


def ortho_loss(model: nn.Module) -> torch.Tensor:
    """Mean over adapted layers of ||A Aᵀ - I||_F² + ||Bᵀ B - I||_F² (≈ 1.44 r per layer at init)."""
    losses = [m.ortho_loss() for m in adapter_layers(model).values()]
    return torch.stack(losses).mean()


def regularizer(cfg: AdapterConfig):
    """(unweighted regulariser as a function of the model, its weight) for the method, or None.

    hira / knowhira: L_ortho = mean over layers of ||A Aᵀ − I||_F² + ||Bᵀ B − I||_F², weight λ;
    kasa: Σ_layers β Σ Δσ² + γ (‖ΔUᵀΔU − I‖_F + ‖ΔVᵀΔV − I‖_F) (summed over layers as in the KaSA
    paper; β, γ inside), weight 1; hira_sb: none (its A and B are fixed).
    """
    if cfg.peft_type in ("hira", "knowhira") and cfg.ortho_lambda > 0:
        return ortho_loss, cfg.ortho_lambda
    if cfg.peft_type == "kasa":
        return (lambda m: torch.stack([layer.regularizer(cfg.kasa_beta, cfg.kasa_gamma)
                                       for layer in adapter_layers(m).values()]).sum()), 1.0
    return None


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---- save / load ---------------------------------------------------------------------------
def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Adapter tensors (A, B, g, R, cached σ_norm; KaSA's factors and dropped components) plus each
    layer's ||W0||_F fingerprint (of the frozen base as the adapter sees it)."""
    state = {}
    for name, layer in adapter_layers(model).items():  # full(): whole tensors under FSDP2
        for key in KASA_TENSORS if isinstance(layer, KaSALinear) else HADAMARD_TENSORS:
            if hasattr(layer, key):
                state[f"{name}.{key}"] = full(getattr(layer, key).detach()).float()
        state[f"{name}.w0_fro"] = full(base_weight(layer.base).detach()).float().norm().reshape(1)
    return state


def save_adapter(model: nn.Module, cfg: AdapterConfig, out_dir, write: bool = True) -> None:
    """Write `adapter_model.safetensors` + `adapter_config.json` (each atomically; no pickle).
    Under FSDP2 every rank calls this (the gather is collective) and only `write=True` writes."""
    state = adapter_state_dict(model)
    if not write:
        return
    out_dir = Path(out_dir)
    atomic_save_safetensors(state, out_dir / ADAPTER_WEIGHTS, metadata={"format": "knowhira"})
    atomic_write_json(out_dir / ADAPTER_CONFIG, asdict(cfg))


def read_adapter_config(adapter_dir) -> AdapterConfig:
    path = Path(adapter_dir) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"no {ADAPTER_CONFIG} in {adapter_dir}")
    return AdapterConfig(**json.loads(path.read_text())).validate()


def load_adapter(model: nn.Module, adapter_dir) -> AdapterConfig:
    """Inject the saved adapter into a fresh base model and restore every tensor, including σ_norm.

    Checks that each layer's ||W0||_F matches the one seen at training time (rel. 1e-2), so an
    adapter loaded onto the wrong base model fails loudly instead of evaluating garbage.
    """
    from safetensors.torch import load_file

    cfg = read_adapter_config(adapter_dir)
    add_adapters(model, cfg, compute_spectrum=False)
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
            if isinstance(layer, KaSALinear):  # W0' = W0 − U_r S_r V_rᵀ from the saved components
                layer.truncate_base_from_buffers()
        for name, layer in layers.items():
            now, then = base_weight(layer.base).float().norm().item(), saved[f"{name}.w0_fro"].item()
            if abs(now - then) > 1e-2 * then:
                raise ValueError(f"base weight of {name} differs from the one the adapter was "
                                 f"trained on (||W0||_F {now:.4g} vs {then:.4g}): wrong base model?")
    return cfg


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
