"""KnowHiRA: W = W0 + s · W0 ⊙ (B M A) with the knowledge-aware core

    M = diag(m),  m = (1 − α) + α · σ_norm ⊙ sigmoid(g)      (σ_norm alone without --adaptive_gating)

σ_norm holds r samples of the PRETRAINED W0's normalised spectrum (models/spectrum.py), computed once
at build time and saved with the adapter; A starts as Kaiming scaled row-wise by f(σ_norm) (the
spectrum-aware init), B = 0; the loss adds λ · L_ortho as HiRA's does.
"""
from dataclasses import dataclass

import torch
from torch import nn

from models.adapter import adapter_layers
from models.hadamard import HadamardLinear
from models.compat import parse_init_ab
from models.layers import base_weight
from models.methods.capabilities import LayerDelta
from models.methods.hira import HiRA, HiRAConfig
from models.spectrum import sigma_norms, spectrum_row_scale
from utils.options import in_range, negative, non_negative, option, positive

INIT_CHOICES = ("spectrum", "kaiming")


@dataclass
class KnowHiRAConfig(HiRAConfig):
    knowledge_alpha: float = option(0.5, "α in M = (1-α) I + α G_Σ (0 = plain HiRA)", check=in_range(0, 1))
    adaptive_gating: bool = option(True, "learnable gate: G_Σ = diag(σ_norm ⊙ sigmoid(g)) (else diag(σ_norm))")
    g_init: float = option(-1.0, "initial gate logit (< 0)", check=negative)
    gate_lr_scale: float = option(1.0, "the gate logits g train at this multiple of --lr (∂L/∂g ∝ B, which "
                                  "starts at 0: Adam moves g by at most ~lr per step)", check=positive)
    svd_rank_ratio: float = option(0.5, "share of the spectrum σ_norm spans: k = max(r, round(ratio·min(out,in)))",
                                   check=in_range(0, 1, low_open=True))
    init_ab: str = option("spectrum", "A init: Kaiming scaled row-wise by f(σ_norm) ('spectrum') or plain "
                          "'kaiming'; B = 0 ('kaiming,zero' is accepted)", parse=parse_init_ab,
                          choices=INIT_CHOICES)
    spectrum_init_scale: float = option(1.0, "τ in f_i ∝ σ_norm_i^τ for the spectrum-aware init",
                                        check=non_negative)


class KnowHiRALinear(HadamardLinear):
    """The Hadamard layer with KnowHiRA's diagonal core. Trainable: A, B and (with gating) g;
    buffer σ_norm (saved with the adapter)."""

    saved_tensors = ("hira_A", "hira_B", "gate", "sigma_norm")

    def __init__(self, base: nn.Module, cfg: KnowHiRAConfig):
        super().__init__(base, cfg)
        dev = self.hira_A.device
        self.knowledge_alpha, self.adaptive_gating = float(cfg.knowledge_alpha), cfg.adaptive_gating
        self.register_buffer("sigma_norm", torch.ones(self.r, device=dev))
        self.gate = nn.Parameter(torch.full((self.r,), float(cfg.g_init), device=dev),
                                 requires_grad=cfg.adaptive_gating)

    def core_diag(self) -> torch.Tensor:
        """m with M = diag(m) = (1 - α) I + α diag(σ_norm ⊙ sigmoid(g))."""
        g_sigma = self.sigma_norm * torch.sigmoid(self.gate) if self.adaptive_gating \
            else self.sigma_norm  # G_Σ = diag(σ_norm ⊙ sigmoid(g))  (or diag(σ_norm))
        return (1.0 - self.knowledge_alpha) + self.knowledge_alpha * g_sigma

    def bm(self) -> torch.Tensor:
        return self.hira_B * self.core_diag()  # B diag(m): scales B's columns


class KnowHiRA(HiRA):
    name = "knowhira"
    config_cls = KnowHiRAConfig
    summary = "W0 + s·W0⊙(B M A), knowledge core M from W0's spectrum with a sigmoid gate (this repo)"
    layer_cls = KnowHiRALinear
    reads_peft = None  # a stock peft HiRA adapter is M = I: method hira (export_peft is inherited)

    def lr_scales(self, cfg):
        """The gates at --gate_lr_scale x --lr (with --adaptive_gating)."""
        return {"gate": cfg.gate_lr_scale} if cfg.adaptive_gating and cfg.gate_lr_scale != 1.0 else {}

    def after_inject(self, model, cfg, compute):
        """σ_norm from the pretrained weights (batched SVDs), then the spectrum-aware init of A."""
        if not compute:  # loading: the saved σ_norm follows
            return
        layers = adapter_layers(model)
        sig = sigma_norms({n: base_weight(m.base) for n, m in layers.items()}, cfg.r_ab, cfg.svd_rank_ratio)
        with torch.no_grad():
            for name, layer in layers.items():
                layer.sigma_norm.copy_(sig[name])
                if cfg.init_ab == "spectrum":  # A = Kaiming(A) scaled row-wise by f(σ)
                    layer.hira_A.mul_(spectrum_row_scale(sig[name], cfg.spectrum_init_scale)[:, None])

    @torch.no_grad()
    def delta(self, name, layer) -> LayerDelta:
        delta = super().delta(name, layer)
        sigma = layer.sigma_norm.detach().float().cpu()
        core = layer.core_diag().detach().float().cpu()
        delta.vectors = {"sigma_norm": sigma, "core": core}
        delta.extra = {"sigma_norm_mean": sigma.mean().item(), "core_mean": core.mean().item(),
                       "core_min": core.min().item(), "core_max": core.max().item()}
        if layer.adaptive_gating:  # without gating sigmoid(g) is not part of the model
            gate = torch.sigmoid(layer.gate.detach().float()).cpu()
            delta.vectors["gate"] = gate
            delta.extra.update(gate_mean=gate.mean().item(), gate_min=gate.min().item(),
                               gate_max=gate.max().item())
        return delta
