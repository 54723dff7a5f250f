"""HiRA (Huang et al., 2025): W = W0 + s · W0 ⊙ (B A), the Hadamard layer with core M = I
(models/hadamard.py; equals peft's HiRA at s = 1, tested to 1e-12), plus λ · L_ortho (the
KnowHiRA regulariser; `--ortho_lambda 0` is plain HiRA)."""
from dataclasses import dataclass

import torch

from models.adapter import adapter_layers
from models.hadamard import HadamardLinear
from models.methods.base import AdapterMethod, LowRankConfig, Regularizer
from utils.options import non_negative, option


@dataclass
class HadamardConfig(LowRankConfig):
    hira_scale: float = option(1.0, "s in W = W0 + s·W0⊙(BMA)")


@dataclass
class HiRAConfig(HadamardConfig):
    ortho_lambda: float = option(1e-3, "λ in L = L_task + λ · mean_layers L_ortho", check=non_negative)


def ortho_loss(model) -> torch.Tensor:
    """Mean over adapted layers of ||A Aᵀ - I||_F² + ||Bᵀ B - I||_F² (≈ 1.44 r per layer at init)."""
    return torch.stack([m.ortho_loss() for m in adapter_layers(model).values()]).mean()


class HiRA(AdapterMethod):
    name = "hira"
    config_cls = HiRAConfig
    summary = "W0 + s·W0⊙(B A) (M = I; --ortho_lambda 0 for plain HiRA)"
    layer_cls = HadamardLinear

    def make_layer(self, base, cfg, compute):
        return self.layer_cls(base, cfg)

    def regularizer(self, cfg):
        """λ · L_ortho, L_ortho = mean over layers of ||A Aᵀ − I||_F² + ||Bᵀ B − I||_F²."""
        return Regularizer(ortho_loss, cfg.ortho_lambda) if cfg.ortho_lambda > 0 else None

    def rank_bound(self, r, shape, w0_rank):
        """rank(W0 ⊙ BMA) <= rank(W0) · rank(BMA) <= rank(W0) · r (Hadamard product of rank-a and
        rank-b matrices has rank <= a·b), capped by min(out, in)."""
        return min(w0_rank * r, min(shape)) if r else min(shape)
