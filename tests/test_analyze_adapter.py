"""analyze_adapter.py on updates of KNOWN rank and subspace: the reported numbers must be the
constructed ones. Pure math first, then end to end on tiny RANDOM Llama models saved as fake runs."""
import csv
import json
import math

import numpy as np
import pytest
import torch

from analysis.adapter_stats import (effective_rank, layer_stats, numerical_rank, random_expectation,
                                    subspace_shares)
from analysis.forgetting import question_from_instruction
from models.layers import base_weight

from conftest import tiny_model

OUT, IN = 200, 150


def _orthonormal(n, k, gen):
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=gen))
    return q


def _svals(m):
    return torch.linalg.svdvals(m.float())


# ---- ranks -------------------------------------------------------------------------------------
def test_rank_one_update():
    gen = torch.Generator().manual_seed(0)
    dw = torch.outer(torch.randn(OUT, generator=gen), torch.randn(IN, generator=gen))
    s = _svals(dw)
    assert numerical_rank(s, dw.shape) == 1
    assert effective_rank(s, dw.shape) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("r", [2, 7, 32])
def test_rank_r_equal_singular_values(r):
    gen = torch.Generator().manual_seed(r)
    dw = 3.0 * _orthonormal(OUT, r, gen) @ _orthonormal(IN, r, gen).t()
    s = _svals(dw)
    assert numerical_rank(s, dw.shape) == r
    assert effective_rank(s, dw.shape) == pytest.approx(r, rel=1e-6)


def test_effective_rank_of_unequal_spectrum():
    s = np.array([3.0, 1.0, 0.0])
    p = np.array([0.75, 0.25])
    assert effective_rank(s) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-12)
    assert numerical_rank(np.zeros(5), (5, 7)) == 0 and effective_rank(np.zeros(5), (5, 7)) == 0.0


@pytest.mark.parametrize("shape", [(OUT, IN), (IN, OUT)])
def test_full_rank_gaussian(shape):
    dw = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    assert numerical_rank(_svals(dw), shape) == min(shape)


def test_tolerance_is_matrix_rank_default():
    """numpy's matrix_rank on a float32 matrix uses the same tolerance (S.max · max(M, N) · eps)."""
    gen = torch.Generator().manual_seed(2)
    dw = (torch.randn(OUT, 5, generator=gen) @ torch.randn(5, IN, generator=gen)).float()
    assert numerical_rank(_svals(dw), dw.shape) == np.linalg.matrix_rank(dw.numpy()) == 5


def bound(method):
    from models.methods import get_method

    return get_method(method).rank_bound


def test_rank_bounds():
    assert bound("lora")(8, (64, 32), 32) == 8
    assert bound("kasa")(8, (64, 32), 32) == 8
    assert bound("knowhira")(8, (64, 32), 3) == 24  # rank(W0) · r
    assert bound("hira")(8, (64, 32), 32) == 32  # capped by min(out, in)
    assert bound("hira_sb")(8, (64, 32), 3) == 24
    assert bound("dora")(8, (64, 32), 10) == 18
    assert bound("ia3")(None, (64, 32), 20) == 20  # W0 rescaled: rank(W0)
    assert bound("fft")(None, (64, 32), 32) == 32


# ---- knowledge-subspace shares -----------------------------------------------------------------
@pytest.fixture(scope="module")
def w0_basis():
    gen = torch.Generator().manual_seed(3)
    w0 = torch.randn(OUT, IN, generator=gen)
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    k = 40
    return w0, u[:, :k], vh[:k].t(), k, gen


def test_shares_inside_top_k(w0_basis):
    _, u_k, v_k, k, gen = w0_basis
    dw = u_k @ torch.randn(k, k, generator=gen) @ v_k.t()
    assert subspace_shares(dw, u_k, v_k) == pytest.approx((1.0, 1.0, 1.0), abs=1e-5)


def test_shares_orthogonal_to_top_k(w0_basis):
    _, u_k, v_k, k, gen = w0_basis
    x = torch.randn(OUT, IN, generator=gen)
    dw = (torch.eye(OUT) - u_k @ u_k.t()) @ x @ (torch.eye(IN) - v_k @ v_k.t())
    assert subspace_shares(dw, u_k, v_k) == pytest.approx((0.0, 0.0, 0.0), abs=1e-6)


def test_shares_of_random_gaussian_match_expectation(w0_basis):
    _, u_k, v_k, k, gen = w0_basis
    dw = torch.randn(OUT, IN, generator=gen)
    expected = random_expectation(k, OUT, IN)
    assert expected == (k / OUT, k / IN, k * k / (OUT * IN))
    assert subspace_shares(dw, u_k, v_k) == pytest.approx(expected, abs=0.05)


def test_layer_stats_uses_pretrained_top_k(w0_basis):
    """k = top_k(r, ratio, min(out, in)); ΔW inside W0's top-2 directions -> shares 1, rank 2."""
    w0, _, _, _, gen = w0_basis
    u, s, vh = torch.linalg.svd(w0, full_matrices=False)
    dw = 0.01 * u[:, :2] @ torch.diag(torch.tensor([2.0, 1.0])) @ vh[:2]
    row, s_dw = layer_stats(dw, w0, rank_bound=bound("lora"), r=4, svd_rank_ratio=0.2)
    assert row["k"] == round(0.2 * IN)
    assert row["numerical_rank"] == 2 and row["rank_bound"] == 4
    assert (row["share_left"], row["share_right"], row["share_both"]) == pytest.approx((1, 1, 1), abs=1e-5)
    assert row["rel_update"] == pytest.approx(dw.norm().item() / w0.norm().item(), rel=1e-5)
    assert row["share_left_random"] == row["k"] / OUT


def test_question_extraction():
    piqa = ("Please choose the correct solution to the question: How do I ready a cage?\n\n"
            "Solution1: a\n\nSolution2: b\n\nAnswer format: solution1/solution2")
    boolq = ("Please answer the following question with true or false, question: is it so: really?"
             "\n\nAnswer format: true/false")
    assert question_from_instruction(piqa) == "How do I ready a cage?"
    assert question_from_instruction(boolq) == "is it so: really?"


# ---- ΔW reconstruction for KaSA and DoRA (layer level) -----------------------------------------
def test_kasa_delta_against_truncated_base_and_pretrained_w0():
    """KaSA: ΔW = (α/r) ΔU diag(Δσ) ΔVᵀ (rank r), relative to the TRUNCATED W0'; the knowledge
    subspace comes from the pretrained W0 = W0' + dropped part."""
    from torch import nn

    from analysis.deltas import iter_deltas
    from models.methods.kasa import KaSAConfig, KaSALinear

    torch.manual_seed(0)
    base = nn.Linear(30, 40)
    w0 = base.weight.detach().clone()
    layer = KaSALinear(base, KaSAConfig(r_ab=3, kasa_alpha=6.0))
    with torch.no_grad():
        layer.kasa_dU.normal_()
    (d,) = iter_deltas({"l": layer}, "kasa", ["l"])
    expected = 2.0 * (layer.kasa_dU * layer.kasa_dS) @ layer.kasa_dV.t()  # α/r = 2
    assert torch.allclose(d.dw, expected.detach(), atol=1e-6)
    assert torch.allclose(d.w0, w0, atol=1e-5)  # pretrained, not truncated
    assert torch.allclose(d.base, base_weight(layer.base), atol=0)  # truncated W0'
    row, _ = layer_stats(d.dw, d.w0, rank_bound=bound("kasa"), r=d.r, svd_rank_ratio=None, base=d.base)
    assert row["numerical_rank"] == 3 and row["rank_bound"] == 3
    assert row["rel_update"] == pytest.approx(expected.norm().item() / d.base.norm().item(), rel=1e-5)
    dropped = layer.dropped_weight().double()
    assert d.extra["kasa_dropped_rel"] == pytest.approx(dropped.norm().item() / w0.double().norm().item(),
                                                        rel=1e-5)


def test_dora_delta_includes_magnitude():
    """DoRA with B = 0 and magnitude m = c·‖W0 row‖: W_merged = c·W0, so ΔW = (c − 1)·W0
    (full rank; peft's get_delta_weight alone would say 0)."""
    from peft import LoraConfig, get_peft_model

    from analysis.deltas import iter_deltas, layer_modules

    model = get_peft_model(tiny_model("llama"), LoraConfig(r=R, target_modules=["q_proj"], use_dora=True))
    modules = layer_modules(model, "dora")
    assert list(modules) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    c = 1.5
    with torch.no_grad():
        for layer in modules.values():
            w0 = base_weight(layer.get_base_layer())
            layer.lora_magnitude_vector["default"].weight.copy_(c * w0.norm(dim=1))
    for d in iter_deltas(modules, "dora", list(modules)):
        assert torch.allclose(d.dw, (c - 1) * d.w0, rtol=1e-5, atol=1e-6)
        row, _ = layer_stats(d.dw, d.w0, rank_bound=bound("dora"), r=d.r, svd_rank_ratio=0.5)
        assert row["rel_update"] == pytest.approx(c - 1, rel=1e-5)
        assert row["numerical_rank"] == row["w0_rank"] == 48


# ---- end to end on fake runs -------------------------------------------------------------------
TARGETS = ["q_proj", "v_proj"]
R = 4


def _read(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def base_dir(tiny_llama_dir):
    return tiny_llama_dir


def _write_run(run, base_dir, peft_type, **extra):
    run.mkdir(parents=True, exist_ok=True)
    (run / "args.json").write_text(json.dumps({
        "peft_type": peft_type, "model_name": str(base_dir), "gguf_file": None, "load_bit": 32,
        "r_ab": R, "svd_rank_ratio": 0.5, "target_modules": TARGETS, **extra}))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, base_dir):
    """Three fake runs with known updates, and what the analysis must report for them."""
    from models.adapter import adapter_layers
    from models.methods import build, get_method
    from models.methods.knowhira import KnowHiRAConfig
    from models.methods.peft_lib import LoRAConfig

    root = tmp_path_factory.mktemp("runs")
    expected = {}

    # KnowHiRA: B M A = c_l · 1 1ᵀ (B's first column 1/m_0, A's first row c_l) -> ΔW = c_l · W0,
    # so ΔW has W0's rank and spectrum; gate logits set per layer and rank index
    model = tiny_model("llama")
    cfg = KnowHiRAConfig(r_ab=R, target_modules=TARGETS)
    model = build(model, cfg)
    know = {}
    with torch.no_grad():
        for i, (name, layer) in enumerate(adapter_layers(model).items()):
            layer.gate.copy_(torch.linspace(-2.0, 1.0, R) + 0.25 * i)
            m0 = layer.core_diag()[0]
            c = 0.05 * (i + 1)
            layer.hira_B.zero_()
            layer.hira_B[:, 0] = 1.0 / m0
            layer.hira_A.normal_()
            layer.hira_A[0] = c
            w0 = base_weight(layer.base).detach().double()
            dw = layer.delta_weight().detach().double()
            assert torch.allclose(dw, c * w0, rtol=1e-5, atol=1e-7)
            s = torch.linalg.svdvals(w0)
            k = max(R, round(0.5 * min(w0.shape)))
            know[name] = {"rel": dw.norm().item() / w0.norm().item(), "c": c,
                          "gate": torch.sigmoid(layer.gate.detach()).tolist(),
                          "sigma_norm": layer.sigma_norm.tolist(),
                          "share": (s[:k] ** 2).sum().item() / (s ** 2).sum().item()}
    run = root / "knowhira_run"
    _write_run(run, base_dir, "knowhira")
    get_method("knowhira").save(model, cfg, run / "best")
    (run / "results.json").write_text(json.dumps({"meta": {}, "tasks": {
        "boolq": {"accuracy": 0.6}, "piqa": {"accuracy": 0.7}}}))
    expected["knowhira"] = know

    # LoRA (peft): B = U_2 diag(2, 1), A = V_2ᵀ (W0's top-2 singular vectors) -> rank 2 <= r,
    # shares 1, effective rank exp(H(2/3, 1/3)); unused columns of B zero
    model = tiny_model("llama")
    lora_cfg = LoRAConfig(r_ab=R, lora_alpha=8.0, target_modules=TARGETS)
    model = build(model, lora_cfg)
    lora = {}
    with torch.no_grad():
        for name, mod in model.named_modules():
            if hasattr(mod, "lora_A") and "default" in getattr(mod, "lora_A", {}):
                w0 = base_weight(mod.get_base_layer()).detach()
                u, s, vh = torch.linalg.svd(w0, full_matrices=False)
                b = torch.zeros(w0.shape[0], R)
                b[:, :2] = u[:, :2] * torch.tensor([2.0, 1.0])
                a = torch.randn(R, w0.shape[1])
                a[:2] = vh[:2]
                mod.lora_B["default"].weight.copy_(b)
                mod.lora_A["default"].weight.copy_(a)
                dw = mod.scaling["default"] * b @ a
                lora[name.removeprefix("base_model.model.")] = dw.norm().item() / w0.norm().item()
    run = root / "lora_run"
    _write_run(run, base_dir, "lora")
    get_method("lora").save(model, lora_cfg, run / "best")
    expected["lora"] = lora

    # fft: one target layer trained by a known rank-3 update, every other target unchanged
    model = tiny_model("llama")
    name = "model.layers.1.self_attn.q_proj"
    with torch.no_grad():
        w = model.get_submodule(name).weight
        gen = torch.Generator().manual_seed(5)
        dw = 0.1 * torch.randn(w.shape[0], 3, generator=gen) @ torch.randn(3, w.shape[1], generator=gen)
        w.add_(dw)
    run = root / "fft_run"
    _write_run(run, base_dir, "fft", target_modules=None)  # default targets of llama
    model.save_pretrained(str(run / "final"), safe_serialization=True)
    expected["fft"] = {"layer": name}
    return root, expected


@pytest.fixture(scope="module")
def analysis(runs, data_dir, tmp_path_factory):
    import analyze_adapter

    root, expected = runs
    out = tmp_path_factory.mktemp("analysis")
    rc = analyze_adapter.main([str(root / "knowhira_run"), str(root / "lora_run"), str(root / "fft_run"),
                               "--out", str(out), "--forgetting_texts", "4", "--data_dir", str(data_dir),
                               "--device", "cpu"])
    assert rc == 0
    return out, expected


def test_outputs_written(analysis):
    out, _ = analysis
    for f in ("adapter_summary.md", "adapter_summary.csv", "layers.csv", "gates.csv",
              "effective_rank.png", "spectra.png", "gates.png", "forgetting_vs_accuracy.png"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0, f


def test_knowhira_relative_update_rank_shares_and_gates(analysis):
    out, expected = analysis
    know = expected["knowhira"]
    rows = [r for r in _read(out / "layers.csv") if r["method"] == "knowhira"]
    assert {r["layer"] for r in rows} == set(know)
    for r in rows:
        e = know[r["layer"]]
        assert float(r["rel_update"]) == pytest.approx(e["rel"], rel=1e-5)
        assert float(r["rel_update"]) == pytest.approx(e["c"], rel=1e-5)  # ΔW = c · W0
        # ΔW = c · W0: the rank of W0, and the share of W0's own energy in its top k
        assert int(r["numerical_rank"]) == int(r["w0_rank"])
        assert float(r["effective_rank"]) == pytest.approx(float(r["w0_effective_rank"]), rel=1e-4)
        for side in ("left", "right", "both"):
            assert float(r[f"share_{side}"]) == pytest.approx(e["share"], abs=1e-5)
        assert int(r["rank_bound"]) == min(int(r["w0_rank"]) * R, int(r["min_dim"]))
        assert float(r["gate_mean"]) == pytest.approx(np.mean(e["gate"]), rel=1e-6)
        assert float(r["gate_min"]) == pytest.approx(min(e["gate"]), rel=1e-6)
    gates = [g for g in _read(out / "gates.csv") if g["label"] == "knowhira"]
    assert len(gates) == len(know) * R
    for g in gates:
        e = know[g["layer"]]
        i = int(g["i"])
        assert float(g["gate"]) == pytest.approx(e["gate"][i], rel=1e-6)
        assert float(g["sigma_norm"]) == pytest.approx(e["sigma_norm"][i], rel=1e-6)
        core = 0.5 + 0.5 * e["sigma_norm"][i] * e["gate"][i]  # (1 − α) + α σ_norm sigmoid(g), α = 0.5
        assert float(g["core"]) == pytest.approx(core, rel=1e-6)


def test_lora_known_rank_and_alignment(analysis):
    out, expected = analysis
    rows = [r for r in _read(out / "layers.csv") if r["method"] == "lora"]
    assert {r["layer"] for r in rows} == set(expected["lora"])
    p = np.array([2 / 3, 1 / 3])
    for r in rows:
        assert int(r["numerical_rank"]) == 2 and int(r["rank_bound"]) == R
        assert float(r["effective_rank"]) == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-5)
        assert float(r["rel_update"]) == pytest.approx(expected["lora"][r["layer"]], rel=1e-5)
        for side in ("left", "right", "both"):
            assert float(r[f"share_{side}"]) == pytest.approx(1.0, abs=1e-5)


def test_fft_known_update(analysis):
    out, expected = analysis
    rows = [r for r in _read(out / "layers.csv") if r["method"] == "fft"]
    assert len(rows) == 2 * 5  # 2 blocks x default llama targets q, k, v, up, down
    for r in rows:
        assert int(r["numerical_rank"]) == (3 if r["layer"] == expected["fft"]["layer"] else 0)


def test_summary_forgetting_and_accuracy(analysis):
    out, expected = analysis
    summary = {r["method"]: r for r in _read(out / "adapter_summary.csv")}
    assert set(summary) == {"knowhira", "lora", "fft"}
    know = summary["knowhira"]
    assert float(know["acc_avg"]) == pytest.approx(0.65) and int(know["n_tasks"]) == 2
    assert summary["lora"]["acc_avg"] == ""
    assert float(know["rel_update_mean"]) == pytest.approx(
        np.mean([e["rel"] for e in expected["knowhira"].values()]), rel=1e-5)
    assert float(summary["lora"]["numerical_rank_mean"]) == 2.0
    for r in summary.values():
        base, adapted, d = float(r["base_loss"]), float(r["adapted_loss"]), float(r["forgetting_dloss"])
        assert math.isfinite(base) and d == pytest.approx(adapted - base, abs=1e-9)
        assert int(r["forgetting_tokens"]) > 0
    # all runs share the base model and the texts: the same base loss
    assert len({round(float(r["base_loss"]), 6) for r in summary.values()}) == 1
    md = (out / "adapter_summary.md").read_text()
    assert "knowhira" in md and "piqa" in md


def test_max_layers_and_no_forgetting(runs, tmp_path):
    import analyze_adapter

    root, _ = runs
    rc = analyze_adapter.main([str(root / "knowhira_run"), "--out", str(tmp_path), "--max_layers", "2",
                               "--forgetting_texts", "0", "--device", "cpu", "--no_figures"])
    assert rc == 0
    rows = _read(tmp_path / "layers.csv")
    assert [r["layer"] for r in rows] == ["model.layers.0.self_attn.q_proj",
                                          "model.layers.1.self_attn.v_proj"]  # first and last
    assert _read(tmp_path / "adapter_summary.csv")[0]["forgetting_dloss"] == ""
    assert not list(tmp_path.glob("*.png"))


def test_bad_run_dir(tmp_path, capsys):
    import analyze_adapter

    assert analyze_adapter.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no args.json" in capsys.readouterr().err


def test_results_folder_elsewhere(runs, tmp_path, capsys):
    """--results R reads R/<run folder name>/results.json; the run's own results.json is then ignored."""
    import analyze_adapter

    root, _ = runs
    results = tmp_path / "text"
    (results / "lora_run").mkdir(parents=True)
    (results / "lora_run" / "results.json").write_text(json.dumps({"meta": {}, "tasks": {
        "boolq": {"accuracy": 0.5}, "piqa": {"accuracy": 0.8}, "obqa": {"accuracy": 0.2}}}))
    runs_args = [str(root / "knowhira_run"), str(root / "lora_run")]
    rc = analyze_adapter.main(runs_args + ["--out", str(tmp_path / "o"), "--results", str(results),
                                           "--max_layers", "1", "--forgetting_texts", "0", "--device", "cpu",
                                           "--no_figures"])
    assert rc == 0
    summary = {r["method"]: r for r in _read(tmp_path / "o" / "adapter_summary.csv")}
    assert float(summary["lora"]["acc_avg"]) == pytest.approx(0.5) and int(summary["lora"]["n_tasks"]) == 3
    assert summary["knowhira"]["acc_avg"] == "" and int(summary["knowhira"]["n_tasks"]) == 0
    assert f"under {results}" in (tmp_path / "o" / "adapter_summary.md").read_text()
    assert analyze_adapter.main(runs_args + ["--out", str(tmp_path / "o2"), "--results",
                                             str(tmp_path / "missing")]) == 2
    assert "--results" in capsys.readouterr().err and not (tmp_path / "o2").exists()


@pytest.mark.parametrize("results, needle", [("[1, 2]", "expected a JSON object of evaluation results, got list"),
                                             ('{"tasks": [1]}', "'tasks' is a JSON list")])
def test_results_json_of_the_wrong_shape_and_out_a_file_are_one_line(results, needle, tmp_path, capsys):
    """Issue 32: results.json a list (or its tasks a list), --out an existing file: one line naming the file,
    exit 2, nothing written (before any model is loaded)."""
    import analyze_adapter

    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "args.json").write_text(json.dumps({"model_name": "gpt2", "peft_type": "lora"}))
    (run / "results.json").write_text(results)
    assert analyze_adapter.main([str(run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run / 'results.json'}: " in err[0] and needle in err[0], err
    assert not (tmp_path / "o").exists()
    (tmp_path / "afile").write_text("kept")
    assert analyze_adapter.main([str(run), "--out", str(tmp_path / "afile")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --out {tmp_path / 'afile'} is a file, not a folder"]
    assert (tmp_path / "afile").read_text() == "kept"
