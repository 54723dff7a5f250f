"""A new method added from this file alone: a Hadamard layer with a trainable diagonal core
M = diag(d) (one config dataclass, one layer class, one Method subclass, one `register` call), then
trained for 2 steps through the CLI entry point, resumed, evaluated and analysed, with no other
project file changed. Tiny RANDOMLY INITIALISED GPT-Neo, real boolq records."""
import json
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import analyze_adapter
import analyze_results
import train_knowhira
from models.hadamard import HadamardLinear
from models.methods import REGISTRY, register
from models.methods.hira import HadamardConfig, HiRA
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

    def regularizer(self, cfg):
        return None


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
