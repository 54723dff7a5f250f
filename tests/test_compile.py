"""--torch_compile (models/compile.py): compiled decoder blocks compute what eager ones compute.

- One training forward and backward on tiny RANDOM models with random non-zero adapters: the loss (the
  output head at the labelled positions, training/loss.py) and every trainable gradient equal eager's to
  1e-5 (fp32), with no graph break, on two batches of different padded lengths (dynamic=True: one graph
  for both). The default suite runs each architecture and each method once (llama-knowhira,
  gpt_neo-hira, gpt2-lora: each new pair is ~25 s of compiling on a 2-core CPU);
  KNOWHIRA_COMPILE_ALL=1 runs all nine pairs.
- The command line on a tiny Llama with knowhira: a compiled 4-step run equals the eager one (losses,
  gradient norms, validation loss to 1e-5), records the flag in args.json, and resumes exactly (2 steps +
  resume = 4 straight, compiled).
- Evaluation with the flag (cloze scoring through the compiled blocks) gives the same predictions and
  scores (to 1e-4) as without.
- Opt-in (KNOWHIRA_COMPILE_ALL=1): DDP and FSDP2 over 2 processes with the flag equal 1 eager process.
All tests here share one process's compiled graphs (same shapes of parameters), so they compile little
after the first.
"""
import copy
import json
import os
import shutil

import pytest
import torch

from conftest import run_main, tiny_model
from models.compile import compile_blocks
from models.methods import build, get_method
from models.targets import default_targets
from models.output_head import OutputHead
from training.loss import task_loss_sum

pytestmark = [pytest.mark.usefixtures("single_thread"),
              pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None,
                                 reason="torch.compile's CPU backend needs a C++ compiler")]

PAIRS = [("llama", "knowhira"), ("gpt_neo", "hira"), ("gpt2", "lora")]
if os.environ.get("KNOWHIRA_COMPILE_ALL") == "1":
    PAIRS = [(a, m) for a in ("llama", "gpt_neo", "gpt2") for m in ("knowhira", "hira", "lora")]
R = 4


def adapted(arch: str, method: str):
    """A tiny random model with `method` on the default targets, trainable weights moved off their init
    (B = 0 would make A's gradient zero), dropout off: compiled dropout draws its masks from inductor's
    generator, so only a model without dropout can be compared mask for mask (GPT-2's default is 0.1)."""
    model = tiny_model(arch)
    cfg = get_method(method).config_cls.from_values({"r_ab": R, "target_modules": ",".join(default_targets(arch))})
    model = build(model, cfg).train()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return model


def batch(length: int, seed: int) -> dict:
    """Two rows, the second right-padded by 3; the first half of each row unlabelled (the prompt)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 50257, (2, length), generator=g)
    mask = torch.ones(2, length, dtype=torch.long)
    mask[1, length - 3:] = 0
    labels = ids.clone()
    labels[:, :length // 2] = -100
    labels[mask == 0] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_and_grads(model, b):
    model.zero_grad(set_to_none=True)
    loss, n = task_loss_sum(model, b, OutputHead.of(model))
    loss.backward()
    return loss.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("arch,method", PAIRS)
def test_compiled_loss_and_gradients_equal_eager(arch, method):
    from torch._dynamo.utils import counters

    eager = adapted(arch, method)
    compiled = copy.deepcopy(eager)
    assert compile_blocks(compiled, torch.device("cpu")) == 2  # both blocks of the tiny model
    calls = counters["stats"]["calls_captured"]
    for length, seed in ((13, 0), (21, 1)):  # two padded lengths: one dynamic graph for both
        b = batch(length, seed)
        loss_e, n_e, grads_e = loss_and_grads(eager, b)
        loss_c, n_c, grads_c = loss_and_grads(compiled, b)
        assert n_c == n_e > 0
        torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-5)
        assert grads_c.keys() == grads_e.keys() and grads_e
        for k in grads_e:
            assert grads_e[k].abs().max() > 0, k  # a gradient that is really there
            torch.testing.assert_close(grads_c[k], grads_e[k], rtol=1e-5, atol=1e-5, msg=k)
    assert counters["stats"]["calls_captured"] > calls  # the blocks did run compiled (dynamo traced them)
    assert not counters["graph_break"], dict(counters["graph_break"])  # adapters included, no graph break


def cli_args(model_dir, data_dir, out, name, *extra):
    return ["--model_name", model_dir, "--data_dir", data_dir, "--dataset", "mix:boolq,openbookqa",
            "--val_size", "4", "--cutoff_len", "96", "--batch", "2", "--max_steps", "4", "--save_steps", "2",
            "--eval_steps", "4", "--keep_checkpoints", "2", "--r_ab", str(R), "--lr", "1e-2", "--seed", "3",
            "--output_folder", out, "--run_name", name, *extra]


@pytest.fixture
def compiled_models(monkeypatch):
    """The models the command line compiled (models.compile.compile_blocks spied on)."""
    import models.compile

    seen, real = [], models.compile.compile_blocks

    def spy(model, device):
        seen.append(model)
        return real(model, device)
    monkeypatch.setattr(models.compile, "compile_blocks", spy)
    return seen


def all_blocks_compiled(model) -> bool:
    from utils.dist import decoder_blocks

    blocks = decoder_blocks(model)
    return len(blocks) == 2 and all(b._compiled_call_impl is not None for b in blocks)


def read_log(run_dir):
    return [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if line]


def test_compiled_run_equals_eager_records_the_flag_and_resumes_exactly(tiny_llama_dir, small_data_dir, tmp_path,
                                                                       capsys, compiled_models):
    for name, extra in (("eager", ()), ("compiled", ("--torch_compile",))):
        rc, err = run_main(cli_args(tiny_llama_dir, small_data_dir, tmp_path, name, *extra), capsys)
        assert rc == 0, err
        assert len(compiled_models) == (name == "compiled")  # the flag, and only the flag, compiles
    assert all_blocks_compiled(compiled_models[0])
    args = {n: json.loads((tmp_path / n / "args.json").read_text()) for n in ("eager", "compiled")}
    assert args["compiled"]["torch_compile"] is True and args["eager"]["torch_compile"] is False
    eager, compiled = read_log(tmp_path / "eager"), read_log(tmp_path / "compiled")
    assert [r["step"] for r in compiled] == [r["step"] for r in eager] == [1, 2, 3, 4]
    for a, b in zip(eager, compiled):  # 4 AdamW steps at lr 1e-2: the gradients agreed all along
        for key in ("loss_task", "loss_reg", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert compiled[-1]["val_loss"] == pytest.approx(eager[-1]["val_loss"], rel=1e-5)  # no_grad graph
    # killed after step 2's checkpoint: the compiled run resumed from it equals the compiled run straight
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "compiled", cut)
    shutil.rmtree(cut / "checkpoints" / "step_000004")
    args["compiled"].update(run_name="cut")
    (cut / "args.json").write_text(json.dumps(args["compiled"]))
    rc, err = run_main(["--resume", cut], capsys)
    assert rc == 0, err
    assert len(compiled_models) == 2  # the resumed run compiles too (args.json's flag)
    resumed = read_log(cut)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(compiled, resumed):
        assert (a["loss_task"], a["loss_reg"], a["grad_norm"]) == (b["loss_task"], b["loss_reg"], b["grad_norm"])
    assert resumed[-1]["val_loss"] == compiled[-1]["val_loss"]


def test_evaluation_with_the_flag_predicts_the_same(tiny_llama_dir, arc_obqa_dir, tmp_path, capsys, compiled_models):
    from torch._dynamo.utils import counters

    rows, captured = {}, {}
    for name, extra in (("eager", ()), ("compiled", ("--torch_compile",))):
        before = counters["stats"]["calls_captured"]
        rc, err = run_main(["--ckpt", "none", "--model_name", tiny_llama_dir, "--data_dir", arc_obqa_dir,
                            "--dataset", "ARC-Easy", "--eval_mode", "cloze", "--batch", "4",
                            "--results_dir", tmp_path / name, *extra], capsys)
        assert rc == 0, err
        assert len(compiled_models) == (name == "compiled")
        captured[name] = counters["stats"]["calls_captured"] - before
        lines = (tmp_path / name / "eval" / "ARC-Easy.jsonl").read_text().splitlines()
        rows[name] = [json.loads(line) for line in lines]
    assert all_blocks_compiled(compiled_models[0])
    assert captured["eager"] == 0 < captured["compiled"]  # the scoring forwards were traced (not eager)
    assert len(rows["compiled"]) == len(rows["eager"]) == 24
    for a, b in zip(rows["eager"], rows["compiled"]):
        assert (a["extracted"], a["pred_norm"]) == (b["extracted"], b["pred_norm"])
        assert b["scores"] == pytest.approx(a["scores"], rel=1e-5, abs=1e-4)


@pytest.mark.skipif(os.environ.get("KNOWHIRA_COMPILE_ALL") != "1", reason="opt-in (KNOWHIRA_COMPILE_ALL=1): two "
                    "torchrun runs that each compile in both processes, ~1 min each on 2 cores")
@pytest.mark.parametrize("shard", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_compiled_two_processes_equal_one_eager_process(tiny_neo_dir, small_data_dir, tmp_path, shard):
    """DDP and FSDP2 wrap the compiled blocks (compiled before sharding, as torchtune does): 2 compiled
    processes x batch 2 give the losses, gradient norms and adapters of 1 eager process x batch 4."""
    import subprocess

    from test_distributed import ROOT, assert_same_run, cmd, env, train_args

    one = subprocess.run(cmd(1, 0) + train_args(tiny_neo_dir, small_data_dir, tmp_path, "one", 4), cwd=ROOT,
                         env=env(), capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(cmd(2, 29613) + train_args(tiny_neo_dir, small_data_dir, tmp_path, "two", 2) + shard
                         + ["--torch_compile"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-2000:]
    assert "torch.compile: 2 decoder blocks" in two.stdout
    assert_same_run(tmp_path / "one", tmp_path / "two", 1e-5)


def test_without_a_cpp_compiler_the_flag_is_one_line_naming_it(monkeypatch):
    import models.compile
    from utils.errors import BadInput

    monkeypatch.setattr(models.compile.shutil, "which", lambda name: None)
    with pytest.raises(BadInput, match=r"^--torch_compile: torch.compile's CPU backend needs a C\+\+ compiler"):
        compile_blocks(tiny_model("llama"), torch.device("cpu"))


def test_bench_compile_numbers():
    """scripts/bench/step.py: compile time = compiled first step - eager first step; the steady state is
    the median of the same steps' ratios, which a recompiling step (here the 3rd) moves by one rank only."""
    from scripts.bench.step import compile_numbers

    first = {"knowhira": 1.5, "knowhira+compile": 41.5}
    times = {"knowhira": [2.0, 3.0, 2.0, 4.0, 2.0], "knowhira+compile": [1.6, 2.5, 30.0, 3.2, 1.6]}
    out = compile_numbers(first, times)["knowhira"]
    assert out["compile_s"] == 40.0
    assert out["eager_over_compiled_per_step"] == pytest.approx([1.25, 1.2, 2 / 30, 1.25, 1.25])
    assert out["eager_over_compiled"] == pytest.approx(1.25)
    lo, hi = out["eager_over_compiled_ci95"]  # medians of the resampled steps: 1.25 above, the smaller ratios below
    assert 2 / 30 <= lo <= 1.2 and hi == pytest.approx(1.25)
    assert (out["eager_steady_s"], out["steady_s"]) == (2.0, 2.5)
