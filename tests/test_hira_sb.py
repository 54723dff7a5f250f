"""HiRA-SB initialisation against explicit least squares, autograd on W0, and the exact SVD (fp64;
tiny RANDOM models, real GPT-2 tokenizer and real commonsense records)."""
import copy

import pytest
import torch

from conftest import tiny_model
from data.commonsense import load_task_split
from data.tokenize import Collator, tokenize_record
from models.adapter import adapter_layers, count_trainable
from models.layers import _is_conv1d, base_weight
from models.hira_sb_init import (accumulate_full_gradients, hira_sb_initialise, sb_factors, sb_layers,
                            sb_solve_r)
from models.methods import build
from models.methods.hira import HiRAConfig
from models.methods.hira_sb import HiRASBConfig, HiRASBLinear
from training.loss import task_loss_sum
from utils.batching import IGNORE_INDEX

TARGETS = {"gpt2": ["c_attn", "mlp.c_proj"], "llama": ["q_proj", "down_proj"],
           "gpt_neo": ["q_proj", "v_proj"]}


# ---- helpers -----------------------------------------------------------------------------------
def design_matrix(w0, b, a):
    """(out·in) x r² matrix whose column k·r + l is vec(W0 ⊙ (B e_k e_lᵀ A))."""
    r = b.shape[1]
    cols = []
    for k in range(r):
        for l in range(r):
            e = torch.zeros(r, r, dtype=w0.dtype)
            e[k, l] = 1.0
            cols.append((w0 * (b @ e @ a)).reshape(-1))
    return torch.stack(cols, 1)


def lstsq_r(w0, g, b, a, eta):
    """Reference R: min-norm least squares (SVD driver) on the explicitly vectorised problem."""
    d = design_matrix(w0, b, a)
    x = torch.linalg.lstsq(d, (-eta * g).reshape(-1, 1), driver="gelsd").solution[:, 0]
    return x.reshape(b.shape[1], b.shape[1]), d


@pytest.fixture(scope="module")
def batches(gpt2_tokenizer, data_dir):
    """Three batches of two real boolq records (cutoff 48 tokens), right-padded."""
    records = load_task_split(data_dir, "boolq", "train")[:6]
    feats = [tokenize_record(gpt2_tokenizer, rec, cutoff_len=48, train_on_inputs=False) for rec in records]
    collate = Collator(gpt2_tokenizer)
    return [collate(feats[i:i + 2]) for i in range(0, 6, 2)]


def normalised_loss(batches):
    n_tok = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    return lambda model, batch: task_loss_sum(model, batch)[0] / n_tok


def sb_model(arch, r=4, scale=1.0, seed=0, double=True):
    base = tiny_model(arch, seed=seed)
    if double:
        base = base.double()
    model = copy.deepcopy(base)
    build(model, HiRASBConfig(r_ab=r, target_modules=TARGETS[arch], hira_scale=scale))
    assert sb_layers(model) == adapter_layers(model)
    assert all(type(m) is HiRASBLinear for m in sb_layers(model).values())
    if double:
        model = model.double()
    return base, model


# ---- a. the normal-equation solve equals explicit least squares --------------------------------
@pytest.mark.parametrize("factors", ["random", "svd"])
@pytest.mark.parametrize("shape", [(7, 5, 3), (5, 9, 2), (6, 6, 4)])
def test_solve_r_equals_vectorised_lstsq(factors, shape):
    out_f, in_f, r = shape
    torch.manual_seed(1)
    w0 = torch.randn(out_f, in_f, dtype=torch.float64)
    g = torch.randn(out_f, in_f, dtype=torch.float64)
    if factors == "random":
        b, a = torch.randn(out_f, r, dtype=torch.float64), torch.randn(r, in_f, dtype=torch.float64)
    else:
        b, a = sb_factors(w0, g, r)
    eta = 0.37
    rr = sb_solve_r(w0, g, b, a, eta)
    ref, _ = lstsq_r(w0, g, b, a, eta)
    assert rr.dtype == torch.float64 and rr.shape == (r, r)
    assert (rr - ref).abs().max().item() < 1e-8 * max(1.0, ref.abs().max().item())
    # R is linear in η
    assert torch.allclose(sb_solve_r(w0, g, b, a, 2 * eta), 2 * rr, rtol=1e-10, atol=1e-12)


def test_solve_r_singular_system_falls_back_to_min_norm_lstsq():
    """Two equal columns of B make N singular: the min-norm least-squares solution is returned."""
    torch.manual_seed(2)
    w0 = torch.randn(7, 5, dtype=torch.float64)
    g = torch.randn(7, 5, dtype=torch.float64)
    b = torch.randn(7, 3, dtype=torch.float64)
    b[:, 2] = b[:, 0]
    a = torch.randn(3, 5, dtype=torch.float64)
    rr = sb_solve_r(w0, g, b, a, 1.0)
    ref, d = lstsq_r(w0, g, b, a, 1.0)
    assert torch.isfinite(rr).all()
    res = (d @ rr.reshape(-1) + g.reshape(-1)).norm()
    res_ref = (d @ ref.reshape(-1) + g.reshape(-1)).norm()
    assert abs(res.item() - res_ref.item()) < 1e-9 * res_ref.item()
    assert (rr - ref).abs().max().item() < 1e-8  # the minimum-norm solution
    # W0 = 0: N = 0, R = 0
    assert sb_solve_r(torch.zeros_like(w0), g, b, a, 1.0).abs().max().item() == 0.0


def test_solve_r_with_unit_w0_is_minus_eta_singular_values():
    """W0 = 1 (LoRA-SB's case): N = I and, with SVD factors, R = -η diag(S_r)."""
    torch.manual_seed(3)
    g = torch.randn(8, 6, dtype=torch.float64)
    w0 = torch.ones_like(g)
    b, a = sb_factors(w0, g, 3)
    s = torch.linalg.svdvals(g)[:3]
    assert torch.allclose(sb_solve_r(w0, g, b, a, 0.5), -0.5 * torch.diag(s), atol=1e-12)


# ---- b. the gradient pass equals autograd on W0 ------------------------------------------------
@pytest.mark.parametrize("arch,offload", [("llama", False), ("gpt2", True)])
def test_accumulated_gradients_equal_autograd_on_w0(arch, offload, batches):
    base, model = sb_model(arch)
    loss_fn = normalised_loss(batches)
    layers = adapter_layers(model)
    with torch.no_grad():  # non-zero adapters must not influence the pass
        for layer in layers.values():
            layer.hira_B.normal_()
            layer.hira_A.normal_()
            layer.hira_R.normal_()
    grads = accumulate_full_gradients(model, batches, loss_fn, offload_to_cpu=offload)

    # reference: a plain copy of the base model with the targeted W0 trainable
    ref_layers = dict(base.named_modules())
    for p in base.parameters():
        p.requires_grad_(False)
    for name in layers:
        ref_layers[name].weight.requires_grad_(True)
    total = sum(loss_fn(base, b) for b in batches)
    total.backward()

    assert set(grads) == set(layers)
    for name, layer in layers.items():
        w = ref_layers[name].weight
        g_ref = w.grad.t() if _is_conv1d(ref_layers[name]) else w.grad
        g = grads[name]
        assert g.shape == base_weight(layer.base).shape and g.dtype == torch.float64
        assert g.device.type == "cpu"
        assert g_ref.norm() > 0
        assert ((g - g_ref).norm() / g_ref.norm()).item() < 1e-5, name
    # nothing left behind: no parameter gradients, no hooks, layers unmerged
    assert all(p.grad is None for p in model.parameters())
    assert not model.get_input_embeddings()._forward_hooks
    for layer in layers.values():
        assert not layer._forward_hooks and not layer.merged
        assert not layer.hira_B.requires_grad and not layer.hira_A.requires_grad
    assert not any(p.requires_grad for n, p in model.named_parameters() if "hira_" not in n)


def test_gradient_pass_cleans_up_on_error(batches):
    _, model = sb_model("gpt_neo", double=False)

    def bad_loss(m, b):
        m(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
        raise KeyError("boom")

    with pytest.raises(KeyError):
        accumulate_full_gradients(model, batches, bad_loss)
    assert not model.get_input_embeddings()._forward_hooks
    for layer in adapter_layers(model).values():
        assert not layer._forward_hooks and not layer.merged
    with pytest.raises(ValueError, match="no batches"):
        accumulate_full_gradients(model, [], normalised_loss(batches))
    # sb_layers picks the layers with a core R: a HiRA model (M = I) has none
    hira = build(tiny_model("gpt_neo"), HiRAConfig(r_ab=4, target_modules=TARGETS["gpt_neo"]))
    assert adapter_layers(hira) and not sb_layers(hira)
    with pytest.raises(ValueError, match="no hira_sb adapter layers"):
        accumulate_full_gradients(hira, batches, normalised_loss(batches))


# ---- c. the factors are the truncated SVD of H = W0 ⊙ G ----------------------------------------
@pytest.mark.parametrize("shape", [(12, 7, 3), (6, 10, 4)])
def test_sb_factors_are_best_rank_r(shape):
    out_f, in_f, r = shape
    torch.manual_seed(4)
    w0 = torch.randn(out_f, in_f, dtype=torch.float64)
    g = torch.randn(out_f, in_f, dtype=torch.float64)
    b, a = sb_factors(w0, g, r)
    eye = torch.eye(r, dtype=torch.float64)
    assert b.shape == (out_f, r) and a.shape == (r, in_f)
    assert torch.allclose(b.t() @ b, eye, atol=1e-12)
    assert torch.allclose(a @ a.t(), eye, atol=1e-12)
    h = w0 * g
    u, s, vh = torch.linalg.svd(h, full_matrices=False)
    core = b.t() @ h @ a.t()  # = S_r, diagonal (the right-hand side of the R system)
    assert torch.allclose(core, torch.diag(s[:r]), atol=1e-12)
    approx = b @ torch.diag(s[:r]) @ a
    best = u[:, :r] @ torch.diag(s[:r]) @ vh[:r]
    assert torch.allclose(approx, best, atol=1e-12)
    # Eckart-Young: the error is the tail of the spectrum
    assert abs((h - approx).norm().item() ** 2 - (s[r:] ** 2).sum().item()) < 1e-10
    with pytest.raises(ValueError):
        sb_factors(w0, g, min(out_f, in_f) + 1)


# ---- d. the initialiser: trainable R only, first-step property --------------------------------
def test_initialise_trains_only_r_and_matches_first_step(batches):
    r, scale, eta = 3, 2.0, 0.05
    _, model = sb_model("gpt_neo", r=r, scale=scale)
    loss_fn = normalised_loss(batches)
    report = hira_sb_initialise(model, batches, loss_fn, eta)
    layers = adapter_layers(model)
    assert set(report) == set(layers)

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(n.endswith("hira_R") for n in trainable)
    assert count_trainable(model) == r * r * len(layers)

    # first-step property: s · W0 ⊙ (B R A) is the least-squares match of -ηG
    grads = accumulate_full_gradients(model, batches, loss_fn)  # R != 0 now: must not matter
    for name, layer in layers.items():
        w0, g = base_weight(layer.base).detach(), grads[name]
        b, a = layer.hira_B.detach(), layer.hira_A.detach()
        assert torch.allclose(b.t() @ b, torch.eye(r, dtype=b.dtype), atol=1e-10)
        ref, d = lstsq_r(w0, g, b, a, eta)
        rr = layer.hira_R.detach() * scale
        assert (rr - ref).abs().max().item() < 1e-8 * ref.abs().max().item()
        res = (layer.delta_weight().detach() + eta * g).norm()
        res_ref = (d @ ref.reshape(-1) + eta * g.reshape(-1)).norm()
        assert abs(res.item() - res_ref.item()) < 1e-8 * res_ref.item()
        assert abs(report[name]["rel_residual"] - (res_ref / (eta * g.norm())).item()) < 1e-8
        assert 0 < report[name]["svd_energy"] <= 1 and report[name]["rel_residual"] < 1

    # a few SGD steps on R: B and A stay put, R moves
    before = {n: (l.hira_B.detach().clone(), l.hira_A.detach().clone(), l.hira_R.detach().clone())
              for n, l in layers.items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    for batch in batches:
        opt.zero_grad()
        loss, n = task_loss_sum(model, batch)
        (loss / n).backward()
        opt.step()
    for name, layer in layers.items():
        b0, a0, r0 = before[name]
        assert torch.equal(layer.hira_B, b0) and torch.equal(layer.hira_A, a0)
        assert not torch.equal(layer.hira_R, r0)


# ---- e. η = 0 leaves the model exactly the base model -----------------------------------------
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_eta_zero_keeps_base_logits(arch, batches):
    base, model = sb_model(arch, double=False)
    report = hira_sb_initialise(model, batches[:2], normalised_loss(batches[:2]), 0.0)
    for name, layer in adapter_layers(model).items():
        assert layer.hira_R.abs().max().item() == 0.0
        assert layer.hira_B.abs().max().item() > 0  # B, A were set
        assert report[name]["r_norm"] == 0.0
    batch = batches[0]
    with torch.no_grad():
        ref = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
