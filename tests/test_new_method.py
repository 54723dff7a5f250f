"""New methods added from this file alone, with no other project file changed:

1. a Hadamard layer with a trainable diagonal core M = diag(d) (one config dataclass, one layer class,
   one Method subclass, one `register` call) that inherits HiRA's capabilities (training hooks, merge,
   peft interop, analysis): trained for 2 steps through the CLI entry point, resumed, evaluated,
   analysed and exported as a stock peft HiRA adapter;
2. a method with the required core only (build, save, load; models/methods/base.py `Method`): it
   trains, resumes and evaluates, and the optional capabilities it lacks (capabilities.py) are refused
   in one line (`--export peft`, `--export merged`, analyze_adapter.py).

Tiny RANDOMLY INITIALISED GPT-Neo, real boolq records."""
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import analyze_adapter
import analyze_results
import train_knowhira
from models.hadamard import HadamardLinear
from models.methods import REGISTRY, Method, MethodConfig, register
from models.methods.hira import HadamardConfig, HiRA
from utils.atomic import atomic_save_safetensors
from utils.options import option, positive

pytestmark = pytest.mark.usefixtures("single_thread")


# ---- the whole method ----------------------------------------------------------------------------
@dataclass
class DiagCoreConfig(HadamardConfig):
    diag_init: float = option(0.5, "initial value of the diagonal core d", check=positive)


class DiagCoreLinear(HadamardLinear):
    """W = W0 + s · W0 ⊙ (B diag(d) A), d trainable."""

    saved_tensors = ("hira_A", "hira_B", "diag")

    def __init__(self, base: nn.Module, cfg: DiagCoreConfig):
        super().__init__(base, cfg)
        self.diag = nn.Parameter(torch.full((self.r,), cfg.diag_init, device=self.hira_A.device))

    def bm(self):
        return self.hira_B * self.diag


class DiagCore(HiRA):
    name = "diag_core"
    config_cls = DiagCoreConfig
    summary = "HiRA with a trainable diagonal core (a test method)"
    layer_cls = DiagCoreLinear

    def regularizer(self, cfg):  # a training hook (HiRA's is λ · L_ortho): none here
        return None


# ---- a method with the required core only ----------------------------------------------------------
@dataclass
class NormTuneConfig(MethodConfig):
    pass


class NormTune(Method):
    """Trains the LayerNorm weights and biases only: no training hooks, no merge, no peft form, no analysis."""

    name = "norm_tune"
    config_cls = NormTuneConfig
    summary = "LayerNorm weights and biases only (a test method)"

    def build(self, model, cfg):
        for module in model.modules():
            for p in module.parameters(recurse=False):
                p.requires_grad_(isinstance(module, nn.LayerNorm))
        return model

    def save(self, model, cfg, out_dir, write=True):
        if write:
            atomic_save_safetensors({n: p for n, p in model.named_parameters() if p.requires_grad},
                                    Path(out_dir) / "norms.safetensors")

    def load(self, model, saved_dir):
        model.load_state_dict(load_file(str(Path(saved_dir) / "norms.safetensors")), strict=False)
        return model


# ---- the run ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def method():
    register(DiagCore())
    yield REGISTRY["diag_core"]
    del REGISTRY["diag_core"]


@pytest.fixture(scope="module")
def data(boolq_dir):
    return boolq_dir


@pytest.fixture(scope="module")
def run(method, data, tiny_neo_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    argv = ["--model_name", str(tiny_neo_dir), "--data_dir", str(data), "--dataset", "boolq",
            "--peft_type", "diag_core", "--diag_init", "0.75", "--r_ab", "4",
            "--target_modules", "q_proj,v_proj", "--batch", "2", "--max_steps", "2", "--val_size", "4",
            "--eval_steps", "2", "--save_steps", "2", "--lr", "1e-2", "--output_folder", str(out),
            "--run_name", "diag"]
    assert train_knowhira.main(argv) == 0
    return out / "diag"


def log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]


def test_trains_with_its_own_flag_and_saves_its_core(run):
    saved = json.loads((run / "args.json").read_text())
    assert saved["peft_type"] == "diag_core" and saved["diag_init"] == 0.75
    # 2 layers x (q, v): r (in + out) + r each, 48 x 48
    assert saved["trainable_params"] == 2 * 2 * (4 * 96 + 4)
    assert [r["step"] for r in log(run)] == [1, 2]
    weights = load_file(str(run / "final" / "knowhira_adapter.safetensors"))
    diags = [v for k, v in weights.items() if k.endswith(".diag")]
    assert len(diags) == 4 and all(d.shape == (4,) for d in diags)
    assert any((d - 0.75).abs().max() > 1e-4 for d in diags)  # the core trained
    assert json.loads((run / "final" / "knowhira_adapter.json").read_text())["diag_init"] == 0.75


def test_resumes(run):
    assert train_knowhira.main(["--resume", str(run), "--max_steps", "4"]) == 0
    assert [r["step"] for r in log(run)] == [1, 2, 3, 4]


def test_evaluates_and_tabulates(run, data, tmp_path):
    assert train_knowhira.main(["--ckpt", str(run), "--data_dir", str(data), "--dataset", "boolq",
                                "--max_examples", "3", "--max_new_tokens", "4"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["meta"]["method"] == "diag_core" and results["meta"]["diag_init"] == 0.75
    assert results["tasks"]["boolq"]["n"] == 3
    assert analyze_results.main([str(run), "--out", str(tmp_path / "table")]) == 0
    assert "diag_init=0.75" in (tmp_path / "table" / "summary.md").read_text()


def test_analyses(run, data, tmp_path):
    assert analyze_adapter.main([str(run), "--out", str(tmp_path), "--forgetting_texts", "0",
                                 "--no_figures", "--data_dir", str(data)]) == 0
    import csv

    rows = list(csv.DictReader(open(tmp_path / "layers.csv")))
    assert len(rows) == 4 and {r["method"] for r in rows} == {"diag_core"}
    for r in rows:  # the Hadamard bound it inherits: rank(W0) · r capped by min(out, in)
        assert int(r["rank_bound"]) == min(int(r["w0_rank"]) * 4, int(r["min_dim"]))
        assert float(r["rel_update"]) > 0


def test_exports_as_a_stock_peft_hira_adapter(run, tmp_path):
    """The PeftInterop capability it inherits from HiRA: B′ = s · B · diag(d), A as trained."""
    out = tmp_path / "peft"
    assert train_knowhira.main(["--ckpt", str(run), "--export", "peft", "--export_dir", str(out)]) == 0
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "HIRA" and config["r"] == 4
    peft = load_file(str(out / "adapter_model.safetensors"))
    ours = load_file(str(run / "best" / "knowhira_adapter.safetensors"))  # best: what --ckpt RUN reads
    layer = "transformer.h.0.attn.attention.q_proj"
    assert torch.equal(peft[f"base_model.model.{layer}.hira_A"], ours[f"{layer}.hira_A"])
    assert torch.equal(peft[f"base_model.model.{layer}.hira_B"], ours[f"{layer}.hira_B"] * ours[f"{layer}.diag"])


# ---- the core-only method ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def core_run(data, tiny_neo_dir, tmp_path_factory):
    register(NormTune())
    try:
        out = tmp_path_factory.mktemp("core_runs")
        argv = ["--model_name", str(tiny_neo_dir), "--data_dir", str(data), "--dataset", "boolq",
                "--peft_type", "norm_tune", "--batch", "2", "--max_steps", "2", "--val_size", "4",
                "--eval_steps", "2", "--save_steps", "2", "--lr", "1e-2", "--output_folder", str(out),
                "--run_name", "norms"]
        assert train_knowhira.main(argv) == 0
        yield out / "norms"
    finally:
        del REGISTRY["norm_tune"]


def test_core_only_method_trains_resumes_and_evaluates(core_run, data):
    saved = json.loads((core_run / "args.json").read_text())
    assert saved["peft_type"] == "norm_tune"
    assert saved["trainable_params"] == (2 * 2 + 1) * 2 * 48  # ln_1, ln_2 of 2 blocks + ln_f: weight, bias
    norms = load_file(str(core_run / "final" / "norms.safetensors"))
    assert len(norms) == 10 and any((v - 1).abs().max() > 1e-4 for k, v in norms.items() if k.endswith("weight"))
    assert train_knowhira.main(["--resume", str(core_run), "--max_steps", "3"]) == 0
    assert [r["step"] for r in log(core_run)] == [1, 2, 3]
    assert all(r.get("loss_reg", 0) == 0 for r in log(core_run))  # no training hooks: no regulariser
    assert train_knowhira.main(["--ckpt", str(core_run), "--data_dir", str(data), "--dataset", "boolq",
                                "--max_examples", "3", "--max_new_tokens", "4"]) == 0
    results = json.loads((core_run / "results.json").read_text())
    assert results["meta"]["method"] == "norm_tune" and results["tasks"]["boolq"]["n"] == 3


def test_core_only_method_refuses_what_it_lacks(core_run, data, tmp_path, capsys):
    for kind, why in (("peft", "norm_tune has no adapter form; use --export merged"),
                      ("merged", "norm_tune cannot be merged into its base model")):
        assert train_knowhira.main(["--ckpt", str(core_run), "--export", kind,
                                    "--export_dir", str(tmp_path / kind)]) == 2
        err = capsys.readouterr().err
        assert why in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / kind).exists()
    assert analyze_adapter.main([str(core_run), "--out", str(tmp_path / "a"), "--forgetting_texts", "0",
                                 "--no_figures", "--data_dir", str(data)]) == 2
    assert "no adapter analysis" in capsys.readouterr().err
