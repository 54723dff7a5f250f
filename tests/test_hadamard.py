"""The Hadamard layer against closed forms, peft's HiRA, and finite differences (fp64)."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

from models.hadamard import HadamardLinear, HadamardLinearFn
from models.methods.hira import HiRAConfig
from models.methods.hira_sb import HiRASBConfig, HiRASBLinear
from models.methods.knowhira import KnowHiRAConfig, KnowHiRALinear
from models.spectrum import sigma_norm_from_values, spectrum_row_scale, top_k

# the three layers of the Hadamard family and their configs (the method files' own pairs)
LAYERS = {"hira": (HadamardLinear, HiRAConfig), "knowhira": (KnowHiRALinear, KnowHiRAConfig),
          "hira_sb": (HiRASBLinear, HiRASBConfig)}


def new_layer(variant, base, r=4, **kw):
    """The `variant` layer around `base`, configured by its method's config (r_ab = r, **kw)."""
    layer_cls, cfg_cls = LAYERS[variant]
    return layer_cls(base, cfg_cls(r_ab=r, **kw))


def make_layer(variant, out_f=20, in_f=12, r=4, seed=0, bias=True, **kw):
    """An fp64 Hadamard-family layer with random non-zero factors, gate and σ_norm."""
    torch.manual_seed(seed)
    base = nn.Linear(in_f, out_f, bias=bias).double()
    layer = new_layer(variant, base, r, **kw).double()
    with torch.no_grad():
        layer.hira_B.normal_()
        layer.hira_A.normal_()
        if variant == "knowhira":
            layer.sigma_norm.uniform_(0.1, 1.0)
            layer.gate.normal_()
        if variant == "hira_sb":
            layer.hira_R.normal_()
    return layer


def closed_form_weight(layer):
    """W = W0 + s · W0 ⊙ (B M A), with M written out as a full r x r matrix."""
    w0, a, b, s, r = layer.base.weight, layer.hira_A, layer.hira_B, layer.scale, layer.r
    eye = torch.eye(r, dtype=torch.float64)
    if type(layer) is HadamardLinear:  # HiRA
        m = eye
    elif type(layer) is KnowHiRALinear:
        g = layer.sigma_norm * torch.sigmoid(layer.gate) if layer.adaptive_gating else layer.sigma_norm
        m = (1 - layer.knowledge_alpha) * eye + layer.knowledge_alpha * torch.diag(g)
    else:
        assert type(layer) is HiRASBLinear
        m = layer.hira_R
    return w0 + s * w0 * (b @ m @ a)


CASES = [("hira", {}), ("knowhira", {"knowledge_alpha": 0.7}),
         ("knowhira", {"knowledge_alpha": 0.3, "adaptive_gating": False}),
         ("knowhira", {"knowledge_alpha": 1.0, "hira_scale": 2.5}), ("hira_sb", {}),
         ("hira_sb", {"hira_scale": 0.5})]


@pytest.mark.parametrize("variant,kw", CASES)
@pytest.mark.parametrize("shape", [(20, 12), (12, 20), (16, 16)])
def test_forward_equals_closed_form(variant, kw, shape):
    layer = make_layer(variant, *shape, **kw)
    x = torch.randn(3, 5, shape[1], dtype=torch.float64)
    y = layer(x)
    ref = x @ closed_form_weight(layer).t() + layer.base.bias
    assert ((y - ref).norm() / ref.norm()).item() < 1e-10
    # the module's own ΔW agrees too (used by merge/export and the analysis)
    dw = closed_form_weight(layer) - layer.base.weight
    assert torch.allclose(layer.delta_weight(), dw, rtol=1e-12, atol=1e-14)


def test_dropout_path_equals_closed_form_in_eval_and_differs_in_train():
    layer = make_layer("knowhira", adapter_dropout=0.5)
    x = torch.randn(4, 12, dtype=torch.float64)
    layer.eval()
    ref = x @ closed_form_weight(layer).t() + layer.base.bias
    assert torch.allclose(layer(x), ref, rtol=1e-12)
    layer.train()
    torch.manual_seed(1)
    y_train = layer(x)
    assert not torch.allclose(y_train, ref)
    # dropout acts on the adapter path only: drop everything -> base output
    layer.dropout.p = 1.0 - 1e-12
    assert torch.allclose(layer(x), layer.base(x), atol=1e-6)


def test_alpha_zero_is_exactly_hira():
    kh = make_layer("knowhira", knowledge_alpha=0.0)
    hira = make_layer("hira")
    with torch.no_grad():
        hira.hira_A.copy_(kh.hira_A)
        hira.hira_B.copy_(kh.hira_B)
        hira.base.load_state_dict(kh.base.state_dict())
    x = torch.randn(6, 12, dtype=torch.float64)
    assert torch.equal(kh(x), hira(x))


@pytest.mark.parametrize("shape", [(20, 12), (12, 20)])
def test_matches_peft_hira(shape):
    from peft import HiraConfig, get_peft_model

    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("lin", nn.Linear(shape[1], shape[0]).double())
    ours = HadamardLinear(nn.Linear(shape[1], shape[0]).double(), HiRAConfig(r_ab=4)).double()
    ours.base.load_state_dict(net.lin.state_dict())
    with torch.no_grad():
        ours.hira_B.normal_()
    peft_model = get_peft_model(net, HiraConfig(r=4, target_modules=["lin"]))
    layer = peft_model.base_model.model.lin
    with torch.no_grad():
        layer.hira_A["default"].copy_(ours.hira_A)
        layer.hira_B["default"].copy_(ours.hira_B)
    x = torch.randn(7, shape[1], dtype=torch.float64)
    assert (peft_model(x) - ours(x)).abs().max().item() < 1e-12


@pytest.mark.parametrize("variant", ["hira", "knowhira", "hira_sb"])
@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_gradcheck(variant, shape):
    layer = make_layer(variant, *shape, r=3)
    x = torch.randn(2, 4, shape[1], dtype=torch.float64, requires_grad=True)
    if variant == "knowhira":
        names = ["hira_A", "hira_B", "gate"]
    elif variant == "hira_sb":
        names = ["hira_R"]
    else:
        names = ["hira_A", "hira_B"]
    params = [getattr(layer, n) for n in names]
    assert all(p.requires_grad for p in params)

    def f(x, *ps):
        return functional_call(layer, dict(zip(names, ps)), (x,))

    inputs = (x, *[p.detach().clone().requires_grad_(True) for p in params])
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-7)


def test_bias_gradient_and_frozen_base():
    layer = make_layer("hira")
    layer.base.bias.requires_grad_(True)  # the Function still returns a correct bias grad
    x = torch.randn(5, 12, dtype=torch.float64)
    layer(x).pow(2).sum().backward()
    ref_b = layer.base.bias.detach().clone().requires_grad_(True)
    (x @ closed_form_weight(layer).detach().t() + ref_b).pow(2).sum().backward()
    assert torch.allclose(layer.base.bias.grad, ref_b.grad)
    assert layer.base.weight.grad is None


def test_hira_sb_trains_only_r():
    layer = make_layer("hira_sb")
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"hira_R"}


@pytest.mark.parametrize("variant,kw,trains", [
    ("hira", {}, {"hira_A", "hira_B"}), ("knowhira", {}, {"hira_A", "hira_B", "gate"}),
    ("knowhira", {"adaptive_gating": False}, {"hira_A", "hira_B"}), ("hira_sb", {}, {"hira_R"})])
def test_layer_class_sets_trainable_and_saved_tensors(variant, kw, trains):
    """The layer class (not a variant string) decides what trains and what the adapter file holds:
    `saved_tensors` is exactly the adapter's own state (parameters and buffers outside the base)."""
    layer = make_layer(variant, **kw)
    assert isinstance(layer, HadamardLinear) and type(layer) is LAYERS[variant][0]
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == trains
    own = {n for n, _ in [*layer.named_parameters(), *layer.named_buffers()] if not n.startswith("base.")}
    assert set(layer.saved_tensors) == own
    assert type(layer).__name__ in repr(layer)


def test_ortho_loss_matches_hand_computation():
    layer = make_layer("knowhira", r=3)
    a, b = layer.hira_A.detach(), layer.hira_B.detach()
    ref = 0.0
    for i in range(3):
        for j in range(3):
            aa = sum(a[i, k] * a[j, k] for k in range(a.shape[1])) - float(i == j)
            bb = sum(b[k, i] * b[k, j] for k in range(b.shape[0])) - float(i == j)
            ref += aa ** 2 + bb ** 2
    assert abs(layer.ortho_loss().item() - float(ref)) < 1e-9


def test_low_precision_base_matches_merged_weight():
    """bf16 base, fp32 adapter: forward = one bf16 GEMM with the fp32-built W rounded once (as a
    merged bf16 model), close to the fp32 result, and factor gradients stay fp32."""
    torch.manual_seed(0)
    layer = KnowHiRALinear(nn.Linear(64, 48), KnowHiRAConfig(r_ab=4))
    with torch.no_grad():
        layer.hira_B.normal_(std=0.1)
    x = torch.randn(16, 64)
    ref = layer(x)
    layer.base.to(torch.bfloat16)
    y = layer(x.bfloat16())
    w_merged = (layer.base.weight.float() + layer.delta_weight()).bfloat16()
    assert torch.equal(y, nn.functional.linear(x.bfloat16(), w_merged, layer.base.bias))
    assert ((y.float() - ref).norm() / ref.norm()).item() < 2e-2
    y.float().pow(2).sum().backward()
    assert layer.hira_A.grad.dtype == torch.float32 and layer.hira_B.grad.dtype == torch.float32


def test_sigma_norm_formula():
    svals = torch.tensor([10.0, 8.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    # r=3, ratio=0.5: k = max(3, round(4)) = 4 -> ranks round(linspace(0, 3, 3)) = [0, 2, 3]  (1.5 -> 2)
    assert top_k(3, 0.5, 8) == 4
    assert torch.allclose(sigma_norm_from_values(svals, 3, 0.5), torch.tensor([1.0, 0.6, 0.5]))
    # ratio=1: k = 8 -> ranks round([0, 3.5, 7]) = [0, 4, 7]  (3.5 -> 4, half to even)
    assert torch.allclose(sigma_norm_from_values(svals, 3, 1.0), torch.tensor([1.0, 0.4, 0.1]))
    with pytest.raises(ValueError, match="r <= min"):
        top_k(9, 0.5, 8)


def test_spectrum_row_scale_keeps_norm_and_orders_rows():
    s = torch.tensor([1.0, 0.5, 0.25, 0.1])
    f = spectrum_row_scale(s, 1.0)
    assert abs(f.pow(2).mean().item() - 1.0) < 1e-6
    assert torch.all(f[:-1] > f[1:])
    assert torch.allclose(spectrum_row_scale(s, 0.0), torch.ones(4))


def _fp32_layer(variant="knowhira", out_f=48, in_f=64, r=4, seed=0):
    torch.manual_seed(seed)
    layer = new_layer(variant, nn.Linear(in_f, out_f), r)
    with torch.no_grad():
        layer.hira_B.normal_(std=0.3)
        layer.hira_A.normal_(std=0.3)
    return layer


def test_autocast_bf16_rounds_the_fp32_effective_weight_once():
    """Under autocast W = W0 ⊙ (1 + s·BMA) is built in fp32 (the small GEMM is kept out of autocast)
    and rounded once to bf16, as a merged bf16 layer would be; gradients stay close to fp32's."""
    layer = _fp32_layer()
    x = torch.randn(5, 64, requires_grad=True)
    w = closed_form_weight(layer.double()).float()
    layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    ref = torch.nn.functional.linear(x.bfloat16(), w.bfloat16(), layer.base.bias.bfloat16())
    assert y.dtype == torch.bfloat16
    assert (y.float() - ref.float()).abs().max() <= 2 * 2 ** -8 * ref.float().abs().max()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # W: fp32 form rounded once
        w_bf16 = HadamardLinearFn.effective_weight(layer.base.weight, layer.bm(), layer.hira_A,
                                                   layer.scale, torch.bfloat16)
    assert (w_bf16 != w.bfloat16()).float().mean() < 0.01  # with s·BMA in bf16: 4% here
    y.float().sum().backward()
    g_bf16 = layer.hira_A.grad.clone()
    layer.zero_grad()
    layer(x).sum().backward()  # fp32 reference
    assert torch.allclose(g_bf16, layer.hira_A.grad, rtol=0.05, atol=0.05 * layer.hira_A.grad.abs().max())


def test_torch_compile_traces_the_fused_layer():
    """torch.compile (aot_eager: dynamo + AOT autograd, no C++ codegen) gives eager's output and
    factor gradients."""
    layer = _fp32_layer()
    x = torch.randn(2, 7, 64)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y_eager = layer(x)
    y_eager.square().sum().backward()
    grads = [p.grad.clone() for p in (layer.hira_A, layer.hira_B, layer.gate)]
    layer.zero_grad()
    y = compiled(x)
    y.square().sum().backward()
    torch.testing.assert_close(y, y_eager)
    for g, p in zip(grads, (layer.hira_A, layer.hira_B, layer.gate)):
        torch.testing.assert_close(p.grad, g)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    """A tiny RANDOM Llama with KnowHiRA: HF gradient checkpointing (non-reentrant, as
    --enable_grad_ckpt sets it) recomputes the fused layers' forward and changes nothing."""
    from conftest import tiny_model
    from models.methods import build

    model = tiny_model("llama", vocab_size=300).train()
    build(model, KnowHiRAConfig(r_ab=4, target_modules=["q_proj", "v_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "hira_B" in n:
                p.normal_(std=0.1)
    ids = torch.randint(0, 300, (2, 16))
    results = []
    for ckpt in (False, True):
        if ckpt:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()
                                      if p.requires_grad}))
    (l0, g0), (l1, g1) = results
    assert l0 == pytest.approx(l1, abs=1e-6)
    assert g0.keys() == g1.keys() and len(g0) == 3 * 2 * 3  # 3 targets x 2 layers x (A, B, g)
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-5, atol=1e-7)


def test_16_bit_weight_gradient_is_rounded_once_as_the_docstring_says():
    """Issue 29 defect 5: models/hadamard.py said the factor gradients were accumulated in fp32; under a bf16
    base Gw = gyᵀx is one bf16 GEMM (rounded to bf16), then cast to fp32 for W0 ⊙ Gw and the small factor
    GEMMs. The gradient of A is exactly that (not the fp32-Gw one), and the docstring says so."""
    import models.hadamard

    torch.manual_seed(0)
    layer = new_layer("hira", nn.Linear(64, 48), 4)
    with torch.no_grad():
        layer.hira_B.normal_(std=0.3)
    layer.base.to(torch.bfloat16)
    x, gy = torch.randn(16, 64).bfloat16(), torch.randn(16, 48).bfloat16()
    layer(x).backward(gy)
    w0, s = layer.base.weight.float(), layer.scale
    one_rounding = s * (layer.hira_B.t() @ ((gy.t() @ x).float() * w0))  # Gw in bf16, then fp32
    fp32_gw = s * (layer.hira_B.t() @ ((gy.float().t() @ x.float()) * w0))
    assert torch.equal(layer.hira_A.grad, one_rounding)
    assert not torch.allclose(layer.hira_A.grad, fp32_gw, rtol=1e-4, atol=0)  # the claim was not true
    doc = " ".join(models.hadamard.__doc__.split())
    assert "factor gradients are accumulated in fp32" not in doc and "one rounding of Gw" in doc
