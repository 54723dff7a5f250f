"""The default target modules are recorded: a run that takes `--target_modules`'s default writes the
architecture's list (models/targets.py) into args.json and into the adapter config at build time, and
loading uses that list, not today's table; runs made before (null) still load and resume."""
import json
import shutil

import pytest
import torch

import models.targets
from conftest import run_main, tiny_model
from models.adapter import ADAPTER_CONFIG, PEFT_CONFIG, adapter_layers, read_adapter_config
from models.methods import build, get_method
from training.logger import read_log

NEO_DEFAULT = ["q_proj", "k_proj", "v_proj", "c_fc", "mlp.c_proj"]
IDS = torch.tensor([[15496, 995, 11, 428, 318, 257, 1332, 13]])


def layer_kinds(model) -> set[str]:
    return {n.rsplit(".", 1)[-1] for n in adapter_layers(model)}


@pytest.mark.parametrize("method", ["knowhira", "kasa"])
def test_default_targets_are_written_into_the_adapter_config(method, tmp_path):
    model = tiny_model("gpt_neo")
    cfg = get_method(method).config_cls(r_ab=4)
    assert cfg.target_modules is None
    build(model, cfg)
    assert cfg.target_modules == NEO_DEFAULT  # resolved at build time, as peft's _prepare_adapter_config
    assert cfg.target_modules is not models.targets.DEFAULT_TARGETS["gpt_neo"]  # a copy, not the table
    get_method(method).save(model, cfg, tmp_path)
    assert read_adapter_config(tmp_path)["target_modules"] == NEO_DEFAULT


def test_peft_methods_record_the_default_targets(tmp_path):
    cfg = get_method("lora").config_cls(r_ab=4)
    model = build(tiny_model("gpt_neo"), cfg)
    assert cfg.target_modules == NEO_DEFAULT
    get_method("lora").save(model, cfg, tmp_path)
    assert sorted(json.loads((tmp_path / PEFT_CONFIG).read_text())["target_modules"]) == sorted(NEO_DEFAULT)


def test_a_saved_run_loads_with_its_recorded_targets_whatever_the_table_says(tmp_path, monkeypatch):
    method = get_method("knowhira")
    cfg = method.config_cls(r_ab=4)
    model = build(tiny_model("gpt_neo"), cfg).eval()
    method.save(model, cfg, tmp_path)
    monkeypatch.setitem(models.targets.DEFAULT_TARGETS, "gpt_neo", ["q_proj"])  # the table changes later
    loaded = method.load(tiny_model("gpt_neo"), tmp_path).eval()
    assert sorted(adapter_layers(loaded)) == sorted(adapter_layers(model))
    assert layer_kinds(loaded) == {"q_proj", "k_proj", "v_proj", "c_fc", "c_proj"}
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_an_old_adapter_config_with_null_targets_still_loads(tmp_path, monkeypatch):
    """Runs made before the list was recorded hold null: resolved with today's table, as they always were."""
    method = get_method("knowhira")
    cfg = method.config_cls(r_ab=4)
    model = build(tiny_model("gpt_neo"), cfg).eval()
    method.save(model, cfg, tmp_path)
    saved = json.loads((tmp_path / ADAPTER_CONFIG).read_text())
    (tmp_path / ADAPTER_CONFIG).write_text(json.dumps({**saved, "target_modules": None}))
    loaded = method.load(tiny_model("gpt_neo"), tmp_path).eval()
    assert sorted(adapter_layers(loaded)) == sorted(adapter_layers(model))
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    # null means today's table: a table that no longer fits the saved tensors is refused, not guessed
    monkeypatch.setitem(models.targets.DEFAULT_TARGETS, "gpt_neo", ["q_proj"])
    with pytest.raises(ValueError, match="does not fit this model"):
        method.load(tiny_model("gpt_neo"), tmp_path)


# ---- a run through the command line ------------------------------------------------------------
def cli_args(model_dir, data_dir, out, *extra):
    """A few-second run with the default targets (no --target_modules): boolq, batch 12, 3 steps/epoch."""
    return ["--model_name", model_dir, "--data_dir", data_dir, "--dataset", "boolq", "--val_size", 4,
            "--cutoff_len", 128, "--batch", 12, "--r_ab", 4, "--lr", "1e-2", "--seed", 3,
            "--eval_strategy", "no", "--save_steps", 1000, "--output_folder", out, *extra]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, tiny_neo_dir, small_data_dir, single_thread):
    out = tmp_path_factory.mktemp("recorded_targets")
    import train_knowhira

    assert train_knowhira.main([str(a) for a in cli_args(tiny_neo_dir, small_data_dir, out, "--max_steps", 2,
                                                         "--run_name", "run")]) == 0
    return out / "run"


def test_a_default_run_records_the_list_in_args_json_and_its_adapter(default_run):
    assert json.loads((default_run / "args.json").read_text())["target_modules"] == NEO_DEFAULT
    assert read_adapter_config(default_run / "final")["target_modules"] == NEO_DEFAULT
    recorded = torch.load(default_run / "checkpoints" / "step_000002" / "state.pt", weights_only=True)["config"]
    assert recorded["target_modules"] == NEO_DEFAULT  # the checkpoint's record, checked on resume


def as_old_run(run, tmp_path):
    """A copy of `run` as a run made before the list was recorded: null in args.json, the adapter
    configs and the checkpoint's recorded configuration."""
    old = tmp_path / "runs" / run.name
    shutil.copytree(run, old)
    args = json.loads((old / "args.json").read_text())
    (old / "args.json").write_text(json.dumps({**args, "target_modules": None}))
    for path in old.rglob(ADAPTER_CONFIG):
        path.write_text(json.dumps({**json.loads(path.read_text()), "target_modules": None}))
    for path in old.rglob("state.pt"):
        state = torch.load(path, weights_only=True)
        state["config"]["target_modules"] = None
        torch.save(state, path)
    return old


def test_an_old_run_with_null_targets_resumes(default_run, tmp_path, capsys, single_thread):
    old = as_old_run(default_run, tmp_path)
    rc, err = run_main(["--resume", old, "--max_steps", 3], capsys)
    assert rc == 0, err
    assert [r["step"] for r in read_log(old)] == [1, 2, 3]
    assert json.loads((old / "args.json").read_text())["target_modules"] == NEO_DEFAULT  # recorded now


def test_an_old_run_resumes_with_the_training_command_repeated(default_run, tiny_neo_dir, small_data_dir, tmp_path,
                                                               capsys, single_thread):
    """The command repeated with --resume: no --target_modules, or the default list spelled out, is no
    change against args.json's null; another list is refused by the checkpoint's record, naming it."""
    for name, extra in (("same", []), ("spelled", ["--target_modules", ",".join(NEO_DEFAULT)])):
        old = as_old_run(default_run, tmp_path / name)
        same = cli_args(tiny_neo_dir, small_data_dir, old.parent, "--run_name", old.name, *extra)
        rc, err = run_main([*same, "--max_steps", 3, "--resume", old], capsys)
        assert rc == 0, (name, err)
        assert [r["step"] for r in read_log(old)] == [1, 2, 3]
    old = as_old_run(default_run, tmp_path / "other")
    files = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    rc, err = run_main(["--resume", old, "--target_modules", "q_proj", "--max_steps", 3], capsys)
    line = err.strip().splitlines()[-1]
    assert rc == 2 and "another configuration" in line and "target_modules" in line and "-> ['q_proj']" in line, err
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == files  # nothing written


def test_a_recorded_list_that_differs_from_the_checkpoint_is_refused(default_run, tmp_path, capsys):
    """The upgrade of null is for null only: an args.json edited to another list is named."""
    run = tmp_path / "runs" / "run"
    shutil.copytree(default_run, run)
    args = json.loads((run / "args.json").read_text())
    (run / "args.json").write_text(json.dumps({**args, "target_modules": ["q_proj"]}))
    rc, err = run_main(["--resume", run, "--max_steps", 3], capsys)
    assert rc == 2 and "target_modules" in err.strip().splitlines()[-1], err
