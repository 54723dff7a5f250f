"""KaSA against the paper's formulas: SVD truncation, closed-form forward, regulariser, gradients,
rebuild from saved buffers, merge/unmerge (fp64 where exactness matters)."""
import copy
import functools
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from models.layers import base_weight
from models.methods.kasa import KASA_TENSORS, KaSAConfig, KaSALinear

from conftest import tiny_model

FACTORS = ("kasa_dU", "kasa_dV", "kasa_dS")


@functools.lru_cache(maxsize=1)
def _tiny_gpt2():
    return tiny_model("gpt2")


def gpt2_c_attn(dtype=torch.float64):
    """A fresh copy of a GPT-2 Conv1D (in 48 -> out 144, weight stored 48 x 144), random init."""
    return copy.deepcopy(_tiny_gpt2().transformer.h[0].attn.c_attn).to(dtype)


def linear(out_f, in_f, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return nn.Linear(in_f, out_f).to(dtype)


def kasa(base, r, compute_svd=True, **kw):
    """KaSALinear(base, KaSAConfig(r_ab=r, **kw)) (kw: kasa_alpha, adapter_dropout, ...)."""
    return KaSALinear(base, KaSAConfig(r_ab=r, **kw), compute_svd=compute_svd)


def make_layer(base, r=4, seed=1, nonzero=True, std=1.0, **kw):
    """A KaSALinear in the base's dtype; with `nonzero` the factors are N(0, std²) (ΔU ≠ 0)."""
    torch.manual_seed(seed)
    layer = kasa(base, r, **kw).to(base.weight.dtype)
    if nonzero:
        with torch.no_grad():
            layer.kasa_dU.normal_(std=std)
            layer.kasa_dV.normal_(std=std)
            layer.kasa_dS.normal_(std=std)
    return layer


BASES = {"linear_20x12": lambda: linear(20, 12), "linear_12x20": lambda: linear(12, 20),
         "gpt2_conv1d": gpt2_c_attn}


# ---- 1. truncation ---------------------------------------------------------------------------
@pytest.mark.parametrize("which", list(BASES))
def test_truncated_weight_has_rank_min_minus_r(which):
    base = BASES[which]()
    w0 = base_weight(base).detach().clone()  # pretrained, out x in
    out_f, in_f = w0.shape
    r = 4
    k = min(out_f, in_f) - r
    layer = kasa(base, r)
    w_trunc = base_weight(layer.base)
    assert layer.base_truncated and w_trunc.dtype == torch.float64
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    s_trunc = torch.linalg.svdvals(w_trunc)
    # rank exactly k (tolerance far below the kept spectrum: s[k-1] / s[0] ~ 1e-2 here)
    assert torch.linalg.matrix_rank(w_trunc, rtol=1e-10).item() == k
    assert torch.linalg.matrix_rank(w0, rtol=1e-10).item() == min(out_f, in_f)
    assert s[k - 1] / s[0] > 1e-4
    # kept singular values are the original top-k; the r smallest are ~0
    assert torch.allclose(s_trunc[:k], s[:k], rtol=0, atol=1e-12 * s[0].item())
    assert s_trunc[k:].max().item() < 1e-12 * s[0].item()
    assert s[k:].min().item() > 1e-3 * s[0].item()  # they were not ~0 before
    # W0' = U_k S_k V_kᵀ
    recon = (u[:, :k] * s[:k]) @ vh[:k]
    assert (w_trunc - recon).abs().max().item() < 1e-12 * s[0].item()
    # the buffers hold the dropped components, and W0 = W0' + U_r S_r V_rᵀ
    assert torch.allclose(layer.kasa_S_drop, s[k:], atol=1e-12)
    assert layer.kasa_U_drop.shape == (out_f, r) and layer.kasa_V_drop.shape == (in_f, r)
    assert (w_trunc + layer.dropped_weight() - w0).abs().max().item() < 1e-12 * s[0].item()
    if which == "gpt2_conv1d":  # Conv1D stores in x out: the transpose was written back
        assert layer.base.weight.shape == (in_f, out_f)
        assert torch.equal(layer.base.weight, w_trunc.t())


def test_truncation_fp32_and_restore_base():
    base = linear(20, 12, dtype=torch.float32)
    w0 = base.weight.detach().clone()
    layer = kasa(base, 3)
    s_trunc = torch.linalg.svdvals(base.weight.double())
    assert s_trunc[9:].max().item() < 1e-5 * s_trunc[0].item()  # 12 - 3 = 9 kept, fp32 rounding
    layer.restore_base()  # W0 = W0' + U_r S_r V_rᵀ, up to fp32 rounding
    assert not layer.base_truncated
    assert (base.weight - w0).abs().max().item() < 1e-6
    layer.truncate_base_from_buffers()
    with pytest.raises(RuntimeError, match="already truncated"):
        layer.truncate_base_from_buffers()


# ---- 2. forward ------------------------------------------------------------------------------
@pytest.mark.parametrize("which", list(BASES))
def test_step0_equals_truncated_base(which):
    base = BASES[which]()
    layer = make_layer(base, nonzero=False)
    assert torch.count_nonzero(layer.kasa_dU) == 0
    assert torch.count_nonzero(layer.kasa_dV) > 0 and torch.count_nonzero(layer.kasa_dS) > 0
    x = torch.randn(2, 5, base_weight(base).shape[1], dtype=torch.float64)
    assert torch.equal(layer(x), layer.base(x))
    assert torch.count_nonzero(layer.delta_weight()) == 0


@pytest.mark.parametrize("which", list(BASES))
@pytest.mark.parametrize("alpha", [16.0, 3.0])
def test_forward_equals_closed_form(which, alpha):
    base = BASES[which]()
    layer = make_layer(base, r=4, kasa_alpha=alpha)
    w_trunc = base_weight(layer.base).detach()
    u, v, s = layer.kasa_dU.detach(), layer.kasa_dV.detach(), layer.kasa_dS.detach()
    dw = (alpha / 4) * u @ torch.diag(s) @ v.t()  # ΔW = (α/r) ΔU diag(Δσ) ΔVᵀ
    x = torch.randn(3, 5, w_trunc.shape[1], dtype=torch.float64)
    ref = x @ (w_trunc + dw).t() + layer.base.bias
    y = layer(x)
    assert ((y - ref).norm() / ref.norm()).item() < 1e-10
    assert (layer.delta_weight() - dw).abs().max().item() < 1e-12 * dw.abs().max().item()
    assert layer.scale == alpha / 4


def test_dropout_acts_on_adapter_path_only():
    layer = make_layer(linear(20, 12), adapter_dropout=0.5)
    x = torch.randn(4, 12, dtype=torch.float64)
    layer.eval()
    ref = layer.base(x) + x @ layer.delta_weight().t()
    assert torch.allclose(layer(x), ref, rtol=1e-12)
    layer.train()
    torch.manual_seed(3)
    assert not torch.allclose(layer(x), ref)
    layer.dropout.p = 1.0  # drop everything -> the (truncated) base output
    assert torch.equal(layer(x), layer.base(x))


def test_dv_kaiming_bound_uses_fan_in_of_in_features():
    torch.manual_seed(0)
    layer = kasa(nn.Linear(400, 300), r=8)
    bound = 1 / math.sqrt(400)  # nn.Linear(in, r): U(-1/√in, 1/√in)
    dv = layer.kasa_dV
    assert dv.shape == (400, 8)
    assert dv.abs().max().item() <= bound and dv.abs().max().item() > 0.98 * bound
    assert abs(dv.std().item() - bound / math.sqrt(3)) < 0.05 * bound


def test_low_precision_base():
    torch.manual_seed(0)
    layer = make_layer(linear(24, 16, dtype=torch.float32))
    x = torch.randn(6, 16)
    ref = layer(x)
    layer.base.to(torch.bfloat16)
    y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    assert ((y.float() - ref).norm() / ref.norm()).item() < 2e-2
    y.float().pow(2).sum().backward()
    assert all(getattr(layer, n).grad.dtype == torch.float32 for n in FACTORS)


# ---- 3. regulariser ------------------------------------------------------------------------
def test_regularizer_matches_hand_computation():
    layer = make_layer(linear(9, 7), r=3)
    u, v, s = (getattr(layer, n).detach() for n in FACTORS)
    beta, gamma = 0.3, 0.7

    def gram_dev_fro(m):  # ‖MᵀM − I‖_F by explicit loops
        tot = 0.0
        for i in range(3):
            for j in range(3):
                g = sum(m[k, i] * m[k, j] for k in range(m.shape[0])) - float(i == j)
                tot += float(g) ** 2
        return math.sqrt(tot)

    ref = beta * sum(float(si) ** 2 for si in s) + gamma * (gram_dev_fro(u) + gram_dev_fro(v))
    assert abs(layer.regularizer(beta, gamma).item() - ref) < 1e-12
    # at init ΔU = 0: ‖−I_r‖_F = √r
    fresh = make_layer(linear(9, 7), r=3, nonzero=False)
    v0 = fresh.kasa_dV.detach()
    expected = 1e-4 * (fresh.kasa_dS.detach() ** 2).sum().item() \
        + 1e-3 * (math.sqrt(3) + gram_dev_fro(v0))
    assert abs(fresh.regularizer().item() - expected) < 1e-12


# ---- 4. gradients ----------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_gradcheck(shape):
    layer = make_layer(linear(*shape), r=3)
    x = torch.randn(2, 4, shape[1], dtype=torch.float64, requires_grad=True)
    params = [getattr(layer, n) for n in FACTORS]

    both = _OutputAndRegularizer(layer)

    def f(x, *ps):
        return functional_call(both, {f"layer.{n}": p for n, p in zip(FACTORS, ps)}, (x,))

    inputs = (x, *[p.detach().clone().requires_grad_(True) for p in params])
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


class _OutputAndRegularizer(nn.Module):
    """Both differentiable outputs of a KaSA layer, so one gradcheck covers forward and L_reg."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x), self.layer.regularizer(0.1, 0.2)


# ---- 5. trainable parameters -----------------------------------------------------------------
@pytest.mark.parametrize("which", list(BASES))
def test_trainable_count_and_one_sgd_step(which):
    base = BASES[which]()
    out_f, in_f = base_weight(base).shape
    r = 4
    layer = make_layer(base, r=r, nonzero=False)
    trainable = {n: p for n, p in layer.named_parameters() if p.requires_grad}
    assert set(trainable) == set(FACTORS)
    assert sum(p.numel() for p in trainable.values()) == r * (out_f + in_f + 1)
    before = {k: v.detach().clone() for k, v in layer.state_dict().items()}
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x = torch.randn(8, in_f, dtype=torch.float64)
    loss = layer(x).pow(2).mean() + layer.regularizer()
    loss.backward()
    opt.step()
    after = layer.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == set(FACTORS)
    assert layer.base.weight.grad is None


# ---- 6. rebuilding from the saved buffers ------------------------------------------------------
@pytest.mark.parametrize("which", ["linear_20x12", "linear_12x20", "gpt2_conv1d"])
def test_rebuild_from_buffers(which):
    pretrained = BASES[which]().float()
    first = make_layer(copy.deepcopy(pretrained))
    fresh = copy.deepcopy(pretrained)
    second = kasa(fresh, first.r, kasa_alpha=first.alpha, compute_svd=False)
    assert not second.base_truncated
    assert torch.equal(fresh.weight, pretrained.weight)  # no SVD, base untouched
    assert all(torch.count_nonzero(getattr(second, n)) == 0 for n in KASA_TENSORS[3:])
    with torch.no_grad():
        for name in KASA_TENSORS:  # what the saver stores (as fp32)
            getattr(second, name).copy_(getattr(first, name).detach().float())
    second.truncate_base_from_buffers()
    assert (second.base.weight - first.base.weight).abs().max().item() < 1e-6
    x = torch.randn(3, 4, base_weight(pretrained).shape[1])
    assert (second(x) - first(x)).abs().max().item() < 1e-6


# ---- 7. merge / unmerge ----------------------------------------------------------------------
@pytest.mark.parametrize("which", list(BASES))
def test_merge_unmerge(which):
    layer = make_layer(BASES[which]().float(), std=0.3)  # outputs O(1), as in training
    x = torch.randn(3, 4, base_weight(layer.base).shape[1])
    w_trunc = layer.base.weight.detach().clone()
    y = layer(x)
    assert (y - layer.base(x)).abs().max().item() > 0.1  # the update is not trivial
    layer.merge()
    assert layer.merged
    y_merged = layer(x)
    assert torch.equal(y_merged, layer.base(x))
    assert (y_merged - y).abs().max().item() < 1e-5
    with pytest.raises(RuntimeError):
        layer.restore_base()
    layer.unmerge()
    assert not layer.merged
    assert torch.equal(layer.base.weight, w_trunc)  # bit for bit
    assert torch.equal(layer(x), y)
    layer.merge(keep_backup=False)
    with pytest.raises(RuntimeError, match="without a backup"):
        layer.unmerge()


# ---- 8. errors -------------------------------------------------------------------------------
@pytest.mark.parametrize("shape,r", [((20, 12), 12), ((12, 20), 12), ((12, 20), 30)])
def test_rank_too_large(shape, r):
    with pytest.raises(ValueError, match=rf"r={r}.*{shape[0]}x{shape[1]}"):
        kasa(linear(*shape), r)


def test_rank_too_large_conv1d_and_bad_args():
    with pytest.raises(ValueError, match="144x48"):
        kasa(gpt2_c_attn(), 48)
    kasa(linear(20, 12), 11)  # r = min - 1 keeps one component: allowed
    # the config's own checks (they ran in the layer before the redesign)
    with pytest.raises(ValueError, match="r_ab: must be > 0"):
        KaSAConfig(r_ab=0)
    with pytest.raises(ValueError, match=r"adapter_dropout: must be in \[0, 1\)"):
        KaSAConfig(r_ab=2, adapter_dropout=1.0)
    for name in ("kasa_beta", "kasa_gamma"):
        with pytest.raises(ValueError, match=f"{name}: must be >= 0"):
            KaSAConfig(**{name: -1e-3})


def test_our_kasa_equals_peft_kasa():
    """Two independent implementations of the KaSA paper: ours and peft's LoRA variant
    (LoraConfig(kasa_config=KasaConfig(...)), peft.tuners.lora.variants.KasaLinearVariant). On the same base,
    with the same trainable values (peft's lora_B = ΔU, lora_A = ΔVᵀ, lora_diag = Δσ, scaling α/r), they keep the
    same truncated base weights (min(out, in) − r components), compute the same logits and the same regulariser
    (β Σ Δσ² + γ (‖BᵀB − I‖_F + ‖AAᵀ − I‖_F), summed over layers)."""
    from peft import KasaConfig, LoraConfig, get_peft_model

    from models.adapter import adapter_layers
    from models.methods import build, get_method

    targets, r, alpha, beta, gamma = ["q_proj", "v_proj", "down_proj"], 4, 8.0, 1e-2, 1e-1
    base = tiny_model("llama", seed=4)
    ours = build(copy.deepcopy(base), KaSAConfig(r_ab=r, target_modules=targets, kasa_alpha=alpha,
                                                 kasa_beta=beta, kasa_gamma=gamma))
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # ΔU = 0 at init: give it values, so the update is tested too
        for layer in adapter_layers(ours).values():
            layer.kasa_dU.copy_(0.1 * torch.randn(layer.kasa_dU.shape, generator=g))
    theirs = get_peft_model(copy.deepcopy(base), LoraConfig(r=r, lora_alpha=alpha, target_modules=targets,
                                                            lora_dropout=0.0,
                                                            kasa_config=KasaConfig(beta=beta, gamma=gamma)))
    with torch.no_grad():
        for name, layer in adapter_layers(ours).items():
            module = theirs.base_model.model.get_submodule(name)
            torch.testing.assert_close(module.base_layer.weight, layer.base.weight, atol=1e-6, rtol=0)
            module.lora_B["default"].weight.copy_(layer.kasa_dU)
            module.lora_A["default"].weight.copy_(layer.kasa_dV.t())
            module.lora_diag["default"].copy_(layer.kasa_dS)
    assert len(adapter_layers(ours)) == 2 * len(targets)  # 2 blocks of the tiny Llama
    ids = torch.arange(5, 37).view(2, 16)
    with torch.no_grad():
        torch.testing.assert_close(theirs(ids).logits, ours(ids).logits, atol=1e-5, rtol=0)
    ours_reg = get_method("kasa").regularizer(KaSAConfig(r_ab=r, kasa_beta=beta, kasa_gamma=gamma)).fn(ours)
    assert float(theirs._get_kasa_loss()) == pytest.approx(float(ours_reg), rel=1e-5)
