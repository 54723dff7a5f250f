"""HiRA-SB: the Hadamard layer with a trainable r x r core R, W = W0 + s · W0 ⊙ (B R A), where B and
A are FIXED from the SVD of W0 ⊙ G (G the full fine-tuning gradient of `--sb_init_batches` training
batches) and R starts as the least-squares match of one full fine-tuning step of size η. The math
(gradient pass, factors, solve) is in models/hira_sb_init.py; the derivation in docs/hira_sb.md."""
from dataclasses import dataclass

import torch
from torch import nn

from models.hadamard import HadamardLinear
from models.hira_sb_init import hira_sb_initialise
from models.methods.hira import HadamardConfig, HiRA
from utils.options import non_negative, option, positive


@dataclass
class HiRASBConfig(HadamardConfig):
    sb_init_batches: int = option(8, "HiRA-SB: training batches whose full fine-tuning gradient sets B, A, R",
                                  check=positive)
    sb_eta: float = option(1e-3, "HiRA-SB: step size η of the full fine-tuning step that R matches",
                           check=non_negative)


class HiRASBLinear(HadamardLinear):
    """Trainable: R only (B and A are fixed once the initialiser has set them)."""

    saved_tensors = ("hira_A", "hira_B", "hira_R")

    def __init__(self, base: nn.Module, cfg: HiRASBConfig):
        super().__init__(base, cfg)
        self.hira_A.requires_grad_(False)
        self.hira_B.requires_grad_(False)
        self.hira_R = nn.Parameter(torch.zeros(self.r, self.r, device=self.hira_A.device))

    def bm(self) -> torch.Tensor:
        return self.hira_B @ self.hira_R  # M = R


class HiRASB(HiRA):
    name = "hira_sb"
    config_cls = HiRASBConfig
    summary = "M = R trainable, B and A fixed from the full fine-tuning gradient (docs/hira_sb.md)"
    layer_cls = HiRASBLinear
    reads_peft = None  # a stock peft HiRA adapter is M = I: method hira (export_peft is inherited)

    def regularizer(self, cfg):
        return None  # A and B are fixed

    def init_batches(self, cfg):
        return cfg.sb_init_batches

    def initialise(self, model, cfg, batches, loss_fn):
        report = hira_sb_initialise(model, batches, loss_fn, eta=cfg.sb_eta)
        return ("HiRA-SB init: mean relative residual "
                f"{sum(r['rel_residual'] for r in report.values()) / len(report):.3f}")
