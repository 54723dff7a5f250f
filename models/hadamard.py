"""The Hadamard adapter family: HiRA, KnowHiRA and HiRA-SB differ only in the r x r core M.

    W = W0 + s * W0 ⊙ (B M A)        B: out x r, A: r x in, M: r x r, ⊙ elementwise

`HadamardLinear` is HiRA (M = I); a method with another core subclasses it in its own file and
overrides `bm()` (models/methods/knowhira.py: M = (1 - α) I + α diag(σ_norm ⊙ sigmoid(g));
models/methods/hira_sb.py: M = R with B and A fixed).

Orientation: PEFT's (B out x r, A r x in). The KnowHiRA slides write ΔW = W0 ⊙ (A G_Σ B) with
A (d x r), B (r x k): the same update with the names of the factors swapped.

Compute path (`HadamardLinearFn`): one GEMM with the effective weight in forward, and in backward
one GEMM for the input gradient plus one for the full weight gradient Gw = gyᵀ x, from which the
factor gradients follow by small matmuls. Nothing of size out x in is kept between forward and
backward: the effective weight is rebuilt from W0, BM and A.

Precision: the adapter factors stay fp32; the effective weight W0 ⊙ (1 + s·BM A) is formed in fp32
and rounded ONCE to the compute dtype (the input's dtype: bf16/fp16 under a 16-bit base or
autocast) for the GEMM. In backward the weight gradient Gw = gyᵀ x is one GEMM in the compute dtype (its
products are summed in fp32 inside the GEMM, its out x in result rounded to the compute dtype), then cast to
fp32 (one more out x in fp32 matrix), where W0 ⊙ Gw and the small factor GEMMs giving the factor gradients
run: so under 16 bits the factor gradients carry one rounding of Gw, not an fp32 Gw. This is exactly the rounding a
merged 16-bit model applies, so a merged export computes what training computed. With adapter
dropout the layer uses the plain two-path autograd form base(x) + dropout(x) (s·W0⊙BMA)ᵀ.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from models.layers import MergeableAdapter, base_weight, layer_shape
from utils.dist import full


class HadamardLinearFn(torch.autograd.Function):
    """y = x (W0 ⊙ (1 + s·BM A))ᵀ + b with a memory-lean backward (see module docstring)."""

    @staticmethod
    def effective_weight(w0, bm, a, scale, dtype):
        """W = W0 ⊙ (1 + s·BM A) formed in the adapter's dtype, rounded once to `dtype`.

        One small GEMM (s is folded into the out x r factor) and one fused elementwise pass written
        in place, so the peak is one fp32 out x in matrix (plus its cast).
        """
        with torch.autocast(w0.device.type, enabled=False):  # the small GEMM in the adapter's dtype
            ba = (bm * scale) @ a  # s·BM A
            return torch.addcmul(w0, w0, ba, out=ba).to(dtype)  # W = W0 + W0 ⊙ (s·BM A)

    @staticmethod
    def forward(ctx, x, w0, bias, bm, a, scale):
        w_eff = HadamardLinearFn.effective_weight(w0, bm, a, scale, x.dtype)
        y = F.linear(x, w_eff, None if bias is None else bias.to(x.dtype))
        ctx.save_for_backward(x, w0, bm, a)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, gy):
        x, w0, bm, a = ctx.saved_tensors
        s, acc = ctx.scale, bm.dtype
        need_x, _, need_bias, need_bm, need_a, _ = ctx.needs_input_grad
        gx = g_bm = g_a = g_bias = None
        if need_x:  # ∂L/∂x = gy W, with W rebuilt (not kept from forward); freed right after
            gx = (gy @ HadamardLinearFn.effective_weight(w0, bm, a, s, gy.dtype)).to(x.dtype)
        gy2 = gy.reshape(-1, gy.shape[-1])
        if need_bm or need_a:
            gw = (gy2.t() @ x.reshape(-1, x.shape[-1]).to(gy.dtype)).to(acc)  # Gw = gyᵀ x
            # ∂L/∂(BM A) = s · W0 ⊙ Gw: W0 ⊙ Gw in place, s applied to the small results below
            h = gw.mul_(w0)
            g_bm = (h @ a.t()).mul_(s) if need_bm else None  # ∂L/∂(BM) = s (W0 ⊙ Gw) Aᵀ
            g_a = (bm.t() @ h).mul_(s) if need_a else None  # ∂L/∂A = s (BM)ᵀ (W0 ⊙ Gw)
        if need_bias:  # only when the base bias is trainable (it is frozen by default)
            g_bias = gy2.sum(0).to(w0.dtype)
        return gx, None, g_bias, g_bm, g_a, None


class HadamardLinear(MergeableAdapter):
    """A frozen linear layer (nn.Linear or GPT-2 Conv1D) plus a HiRA adapter, W = W0 + s·W0 ⊙ (B A).

    `cfg` is the method's config (fields r_ab, hira_scale, adapter_dropout). Trainable: A, B.
    Subclasses put a core between the factors by overriding `bm()`.
    """

    saved_tensors = ("hira_A", "hira_B")

    def __init__(self, base: nn.Module, cfg):
        super().__init__()
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        out_f, in_f = layer_shape(base)
        self.r, self.scale = cfg.r_ab, float(cfg.hira_scale)
        self.dropout = nn.Dropout(cfg.adapter_dropout) if cfg.adapter_dropout > 0 else None
        dev = base.weight.device
        a = torch.empty(self.r, in_f, device=dev)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
        self.hira_A = nn.Parameter(a)
        self.hira_B = nn.Parameter(torch.zeros(out_f, self.r, device=dev))
        self.merged = False

    def bm(self) -> torch.Tensor:
        """B M (out x r) in fp32; HiRA: M = I."""
        return self.hira_B

    def delta_weight(self) -> torch.Tensor:
        """ΔW = s · W0 ⊙ (B M A), out x in, in the adapter's dtype (fp32)."""
        return self.scale * base_weight(self.base).to(self.hira_A.dtype) * (self.bm() @ self.hira_A)

    def ortho_loss(self) -> torch.Tensor:
        """L_ortho = ||A Aᵀ - I_r||_F² + ||Bᵀ B - I_r||_F²  (r x r Gram matrices)."""
        eye = torch.eye(self.r, device=self.hira_A.device)
        a, b = full(self.hira_A), full(self.hira_B)  # whole factors under FSDP2 (utils/dist.py)
        return ((a @ a.t() - eye) ** 2).sum() + ((b.t() @ b - eye) ** 2).sum()

    # ---- forward / merge -------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        if self.dropout is not None and self.training:
            # two-path form: base(x) + drop(x) (s · W0 ⊙ BMA)ᵀ
            return self.base(x) + F.linear(self.dropout(x), self.delta_weight().to(x.dtype))
        return HadamardLinearFn.apply(x, base_weight(self.base), self.base.bias,
                                      self.bm(), self.hira_A, self.scale)

    def extra_repr(self) -> str:
        out_f, in_f = layer_shape(self.base)
        return f"{type(self).__name__}, in={in_f}, out={out_f}, r={self.r}, scale={self.scale}"
