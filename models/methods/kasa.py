"""KaSA: Knowledge-aware Singular-value Adaptation (Wang et al., 2024), following the PAPER.

Given a frozen pretrained layer W0 (out x in) and a rank r < min(out, in):

1. Knowledge-based truncation. Full (thin) SVD W0 = U S Vᵀ with the singular values descending.
   Keep the top k = min(out, in) − r components and replace the frozen weight IN PLACE by

       W0' = U_k S_k V_kᵀ = W0 − U_r S_r V_rᵀ        (U_r, S_r, V_r: the r SMALLEST components)

   The truncation is implemented as that subtraction. The dropped components are kept as buffers
   `kasa_U_drop` (out x r), `kasa_S_drop` (r), `kasa_V_drop` (in x r), so that
   (a) an adapter loaded onto a fresh pretrained model needs no SVD: build the layer with
       `compute_svd=False`, copy the buffers in, and call `truncate_base_from_buffers()`;
   (b) the pretrained weight can be brought back: W0 = W0' + U_r S_r V_rᵀ (`restore_base()`). This
       is exact in exact arithmetic; in floating point it matches W0 up to rounding (~1e-7 relative
       in fp32, ~1e-15 in fp64), and not bit for bit, since W0' was rounded to the weight's dtype.
   The SVD and the subtraction run on the weight's device in fp32 (fp64 for an fp64 weight); W0' is
   rounded once to the weight's dtype. For a 16-bit base that rounding means W0' is only rank k up
   to bf16/fp16 precision.

2. Knowledge-aware singular-value adaptation. Trainable ΔU (out x r), ΔV (in x r), Δσ (r):

       ΔW      = (α/r) · ΔU diag(Δσ) ΔVᵀ                                   (out x in)
       forward = base(x) + (α/r) · ((dropout(x) @ ΔV) ⊙ Δσ) @ ΔUᵀ           (ΔW never formed)

   Init: ΔU = 0 (so the layer starts as the truncated base), Δσ ~ N(0, 1), ΔV Kaiming-uniform with
   a = √5 as nn.Linear does, with fan_in = in (see `_init_dv`). Trainable count: r · (out + in + 1).

3. Regulariser (added to the task loss by the training loop):

       L_reg = β · Σ_i Δσ_i² + γ · (‖ΔUᵀΔU − I_r‖_F + ‖ΔVᵀΔV − I_r‖_F)

   with Frobenius NORMS (not squared) and r x r Gram matrices, as the paper writes it.

The official KaSA code differs from the paper in two places; we follow the paper in both:
- it truncates to in_features − r components (not min(out, in) − r), so a layer with out < in is
  not truncated at all (in − r >= out keeps every component);
- its orthogonality terms build full-width Gram matrices (out x out, in x in) instead of r x r.

Merge: W0' <- W0' + ΔW in place (`merge`); `unmerge` restores W0' bit for bit from a backup.
"""
import math
from dataclasses import dataclass

import torch
from torch import nn

from models.adapter import adapter_layers, read_adapter_config
from models.layers import MergeableAdapter, _is_conv1d, acc_dtype, base_weight, layer_shape
from models.methods.base import AdapterMethod, LowRankConfig
from models.methods.capabilities import LayerDelta, PeftInterop, Regularizer, TrainingHooks
from utils.dist import full
from utils.errors import BadInput
from utils.options import non_negative, option

KASA_TENSORS = ("kasa_dU", "kasa_dV", "kasa_dS", "kasa_U_drop", "kasa_S_drop", "kasa_V_drop")


@dataclass
class KaSAConfig(LowRankConfig):
    kasa_alpha: float = option(16.0, "KaSA: α in ΔW = (α/r) ΔU diag(Δσ) ΔVᵀ")
    kasa_beta: float = option(1e-4, "KaSA: β · Σ Δσ²", check=non_negative)
    kasa_gamma: float = option(1e-3, "KaSA: γ · (‖ΔUᵀΔU − I‖_F + ‖ΔVᵀΔV − I‖_F)", check=non_negative)


def _init_dv(in_f: int, r: int, device) -> torch.Tensor:
    """ΔV (in x r) as nn.Linear(in, r) would initialise its weight, transposed.

    x @ ΔV maps in -> r, so ΔVᵀ plays the role of an nn.Linear(in, r) weight (r x in) and the fan_in
    is `in`. Calling kaiming_uniform_ on the in x r tensor directly would take fan_in = r (its
    size(1)) and give far too large entries. Bound: gain·√(3/fan_in) = √(2/(1+5))·√(3/in) = 1/√in.
    """
    w = torch.empty(r, in_f, device=device)
    nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # fan_in = in; U(-1/√in, 1/√in)
    return w.t().contiguous()


class KaSALinear(MergeableAdapter):
    """A frozen linear layer (nn.Linear or GPT-2 Conv1D), SVD-truncated, plus a KaSA adapter.

    Trainable: kasa_dU, kasa_dV, kasa_dS. Buffers saved with the adapter: kasa_U_drop, kasa_S_drop,
    kasa_V_drop (the r dropped singular components of the pretrained weight).

    `compute_svd=False` (for the loader): the base is left untouched and the buffers start at zero;
    fill them from the saved adapter, then call `truncate_base_from_buffers()`.
    """

    saved_tensors = KASA_TENSORS

    def __init__(self, base: nn.Module, cfg: KaSAConfig, compute_svd: bool = True):
        super().__init__()
        out_f, in_f = layer_shape(base)
        r, alpha, dropout = cfg.r_ab, cfg.kasa_alpha, cfg.adapter_dropout
        if r >= min(out_f, in_f):
            raise BadInput(f"KaSA rank r={r} must be < min(out, in) = {min(out_f, in_f)} for a "
                           f"{out_f}x{in_f} (out x in) layer: it keeps min(out, in) - r singular "
                           f"components of W0")
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)
        self.r, self.alpha = r, float(alpha)
        self.scale = self.alpha / r  # α/r
        self.dropout = nn.Dropout(dropout) if dropout > 0 else None
        w0 = base_weight(base)
        dev, acc = w0.device, acc_dtype(w0.dtype)

        self.kasa_dU = nn.Parameter(torch.zeros(out_f, r, device=dev))  # ΔU = 0
        self.kasa_dV = nn.Parameter(_init_dv(in_f, r, dev))  # Kaiming-uniform, fan_in = in
        self.kasa_dS = nn.Parameter(torch.randn(r, device=dev))  # Δσ ~ N(0, 1)

        self.register_buffer("kasa_U_drop", torch.zeros(out_f, r, device=dev, dtype=acc))
        self.register_buffer("kasa_S_drop", torch.zeros(r, device=dev, dtype=acc))
        self.register_buffer("kasa_V_drop", torch.zeros(in_f, r, device=dev, dtype=acc))
        self.base_truncated = False
        self.merged = False
        if compute_svd:
            with torch.no_grad():
                # W0 = U S Vᵀ (thin SVD: min(out, in) components, σ descending); keep the last r
                u, s, vh = torch.linalg.svd(w0.detach().to(acc), full_matrices=False)
                k = min(out_f, in_f) - r
                self.kasa_U_drop.copy_(u[:, k:])  # U_r (out x r)
                self.kasa_S_drop.copy_(s[k:])  # S_r (r), the r smallest singular values
                self.kasa_V_drop.copy_(vh[k:].t())  # V_r (in x r)
            self.truncate_base_from_buffers()

    def after_load(self) -> None:
        self.truncate_base_from_buffers()  # W0' = W0 − U_r S_r V_rᵀ from the saved components

    # ---- truncation ------------------------------------------------------------------------
    def dropped_weight(self) -> torch.Tensor:
        """U_r S_r V_rᵀ (out x in), the part of W0 the truncation removes, in the buffers' dtype."""
        return (self.kasa_U_drop * self.kasa_S_drop) @ self.kasa_V_drop.t()

    @torch.no_grad()
    def truncate_base_from_buffers(self) -> None:
        """W0' = W0 − U_r S_r V_rᵀ in place (no SVD); for Conv1D the transposed view is written."""
        if self.base_truncated:
            raise RuntimeError("the base weight of this KaSA layer is already truncated")
        if self.merged:
            raise RuntimeError("cannot truncate a merged KaSA layer")
        w = base_weight(self.base)
        dropped = self.dropped_weight()
        w.copy_((w.to(dropped.dtype) - dropped).to(w.dtype))  # W0' = W0 − U_r S_r V_rᵀ
        self.base_truncated = True

    @torch.no_grad()
    def restore_base(self) -> None:
        """W0 = W0' + U_r S_r V_rᵀ in place: the pretrained weight up to fp rounding (not bitwise)."""
        if self.merged:
            raise RuntimeError("unmerge the KaSA layer before restoring its pretrained weight")
        if not self.base_truncated:
            raise RuntimeError("the base weight of this KaSA layer is not truncated")
        w = base_weight(self.base)
        dropped = self.dropped_weight()
        w.copy_((w.to(dropped.dtype) + dropped).to(w.dtype))  # W0 = W0' + U_r S_r V_rᵀ
        self.base_truncated = False

    # ---- the update ------------------------------------------------------------------------
    def delta_weight(self) -> torch.Tensor:
        """ΔW = (α/r) · ΔU diag(Δσ) ΔVᵀ, out x in, in the adapter's dtype (fp32)."""
        return self.scale * (self.kasa_dU * self.kasa_dS) @ self.kasa_dV.t()

    def regularizer(self, beta: float = 1e-4, gamma: float = 1e-3) -> torch.Tensor:
        """β · Σ Δσ² + γ · (‖ΔUᵀΔU − I_r‖_F + ‖ΔVᵀΔV − I_r‖_F)  (norms, not squared; r x r)."""
        u, v, s = full(self.kasa_dU), full(self.kasa_dV), full(self.kasa_dS)  # whole under FSDP2
        eye = torch.eye(self.r, device=u.device, dtype=u.dtype)
        ortho = torch.linalg.matrix_norm(u.t() @ u - eye) + torch.linalg.matrix_norm(v.t() @ v - eye)
        return beta * (s * s).sum() + gamma * ortho

    # ---- forward / merge -------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.merged:
            return y
        h = self.dropout(x) if self.dropout is not None else x
        h = h.to(self.kasa_dV.dtype)
        # (α/r) · ((x ΔV) ⊙ Δσ) ΔUᵀ : in -> r -> r -> out, never forming ΔW
        delta = ((h @ self.kasa_dV) * self.kasa_dS) @ self.kasa_dU.t()
        return y + (self.scale * delta).to(y.dtype)

    def extra_repr(self) -> str:
        out_f, in_f = layer_shape(self.base)
        return (f"in={in_f}, out={out_f}, r={self.r}, alpha={self.alpha}, "
                f"truncated={self.base_truncated}")


class KaSA(AdapterMethod, TrainingHooks, PeftInterop):
    name = "kasa"
    config_cls = KaSAConfig
    summary = "SVD-truncated W0 (drop the r smallest components) + (α/r) ΔU diag(Δσ) ΔVᵀ (KaSA paper)"
    analysis_note = ("KaSA truncated W0 to min(out, in) − r components before training; "
                     "ΔW is added to that truncated W0'.")

    def export_peft(self, out_dir, *, saved_dir, base_model_name, load_model):
        """peft's own KaSA (a LoRA variant: LoraConfig(kasa_config=KasaConfig(β, γ))): peft truncates the
        pretrained base itself when it loads the adapter (the same min(out, in) − r components, checked equal
        in tests/test_kasa.py), so the files hold lora_B = ΔU, lora_A = ΔVᵀ, lora_diag = Δσ with
        lora_alpha = α: what peft's save_pretrained writes for a model built with them."""
        from peft import KasaConfig, LoraConfig, get_peft_model

        model = load_model()
        layers = adapter_layers(model)
        if len({(layer.r, layer.alpha) for layer in layers.values()}) != 1:
            raise ValueError("layers of different ranks or α: not one peft KaSA config")
        if any(layer.merged for layer in layers.values()) or any(_is_conv1d(layer.base) for layer in layers.values()):
            raise BadInput("a merged adapter, or a GPT-2 Conv1D layer (peft's KaSA is for nn.Linear): use "
                           "--export merged")
        saved = read_adapter_config(saved_dir)
        trained = {}
        with torch.no_grad():
            for name, layer in layers.items():  # back to the pretrained W0 (up to rounding): peft truncates it
                layer.restore_base()
                parent, _, attr = name.rpartition(".")
                setattr(model.get_submodule(parent), attr, layer.base)
                trained[name] = (layer.kasa_dU.detach(), layer.kasa_dV.detach(), layer.kasa_dS.detach())
        first = next(iter(layers.values()))
        config = LoraConfig(r=first.r, lora_alpha=first.alpha, target_modules=sorted(layers), lora_dropout=0.0,
                            task_type="CAUSAL_LM", base_model_name_or_path=base_model_name, inference_mode=True,
                            kasa_config=KasaConfig(beta=saved["kasa_beta"], gamma=saved["kasa_gamma"]))
        peft_model = get_peft_model(model, config)
        with torch.no_grad():
            for name, (du, dv, ds) in trained.items():
                module = peft_model.base_model.model.get_submodule(name)
                module.lora_B["default"].weight.copy_(du)
                module.lora_A["default"].weight.copy_(dv.t())
                module.lora_diag["default"].copy_(ds)
        peft_model.save_pretrained(str(out_dir))
        return f"peft KaSA adapter (LoRA variant), {len(layers)} layers, r = {first.r}, α = {first.alpha:g}"

    def make_layer(self, base, cfg, compute):
        return KaSALinear(base, cfg, compute_svd=compute)

    def regularizer(self, cfg):
        """Σ_layers β Σ Δσ² + γ (‖ΔUᵀΔU − I‖_F + ‖ΔVᵀΔV − I‖_F), summed over layers as in the paper
        (β, γ inside), weight 1."""
        return Regularizer(lambda m: torch.stack([layer.regularizer(cfg.kasa_beta, cfg.kasa_gamma)
                                                  for layer in adapter_layers(m).values()]).sum(), 1.0)

    def rank_bound(self, r, shape, w0_rank):
        return min(r, *shape) if r else min(shape)  # ΔU diag(Δσ) ΔVᵀ: rank <= r

    @torch.no_grad()
    def delta(self, name, layer):
        """ΔW is added to the TRUNCATED base W0'; the pretrained W0 = W0' + U_r S_r V_rᵀ."""
        w = base_weight(layer.base).detach()
        dw = layer.delta_weight().detach().float()
        dropped = layer.dropped_weight().double()
        w0 = w.double() + dropped
        w0_fro = w0.norm().item()
        extra = {"kasa_dropped_components": layer.r,
                 "kasa_dropped_rel": dropped.norm().item() / w0_fro,  # ‖U_r S_r V_rᵀ‖ / ‖W0‖
                 # the total change of the layer against the PRETRAINED weight: W0' + ΔW − W0
                 "rel_update_vs_pretrained": (dw.double() - dropped).norm().item() / w0_fro}
        return LayerDelta(name, dw, w0.float(), w.float(), layer.r, extra)
