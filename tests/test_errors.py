"""Issue 29, defect 1: bad input has its own exception type (utils/errors.py BadInput); the entry points
turn it, and only it, into one line and exit 2. Any other exception is a bug and keeps its traceback:
train_knowhira.py used to turn every ValueError (and FileNotFoundError) into "error: ..." exit 2."""
import json

import pytest

from conftest import run_main
from utils.errors import BadInput


def train_argv(data, out, model="no/such-model-needed"):
    return ["--model_name", model, "--data_dir", data, "--dataset", "boolq", "--output_folder", out,
            "--run_name", "r", "--max_steps", 1, "--val_size", 4]


def test_an_internal_value_error_in_training_setup_propagates_with_its_traceback(small_data_dir, tmp_path,
                                                                                 monkeypatch, capsys):
    """A plain ValueError from our own code during setup is a bug: main() must not print it as bad input."""
    import data.commonsense

    def broken(records, n_val):
        raise ValueError("internal")
    monkeypatch.setattr(data.commonsense, "split_validation", broken)  # setup imports it at call time
    with pytest.raises(ValueError, match="^internal$") as e:
        run_main(train_argv(small_data_dir, tmp_path / "runs"), capsys)
    assert not isinstance(e.value, BadInput)
    assert "error: internal" not in capsys.readouterr().err
    assert not (tmp_path / "runs" / "r").exists()


def test_an_internal_value_error_in_evaluation_propagates(tiny_neo_dir, data_dir, tmp_path, monkeypatch, capsys):
    import eval.evaluate

    def broken(*a, **k):
        raise ValueError("internal")
    monkeypatch.setattr(eval.evaluate, "check_records", broken)
    with pytest.raises(ValueError, match="^internal$"):
        run_main(["--ckpt", "none", "--model_name", tiny_neo_dir, "--data_dir", data_dir, "--dataset", "boolq",
                  "--max_examples", 2, "--results_dir", tmp_path / "res"], capsys)
    assert "error: internal" not in capsys.readouterr().err


def test_analyze_adapter_lets_an_internal_error_through(tmp_path, monkeypatch, capsys):
    import analyze_adapter

    (tmp_path / "run").mkdir()
    monkeypatch.setattr(analyze_adapter, "read_run", lambda *a, **k: (_ for _ in ()).throw(KeyError("internal")))
    with pytest.raises(KeyError):
        analyze_adapter.main([str(tmp_path / "run"), "--out", str(tmp_path / "out")])
    monkeypatch.undo()
    assert analyze_adapter.main([str(tmp_path / "run"), "--out", str(tmp_path / "out")]) == 2  # bad input
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no args.json" in err


@pytest.mark.parametrize("case, needle", [
    ("dataset", "unknown dataset 'nope'"),
    ("data_dir", "does not exist"),
    ("config", "no such file"),
    ("resume", "no args.json there"),
    ("model", "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(case, needle, small_data_dir, tmp_path, capsys):
    argv = train_argv(small_data_dir, tmp_path / "runs")
    if case == "dataset":
        argv[argv.index("boolq")] = "nope"
    elif case == "data_dir":
        argv[argv.index(small_data_dir)] = tmp_path / "absent"
    elif case == "config":
        argv = ["--config", tmp_path / "absent.json"]
    elif case == "resume":
        (tmp_path / "empty").mkdir()
        argv = ["--resume", tmp_path / "empty"]
    else:
        argv[1] = str(tmp_path / "absent_model")
    rc, err = run_main(argv, capsys)
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and needle in err, err
    assert "Traceback" not in err


def test_a_damaged_config_file_is_bad_input(tmp_path, capsys):
    (tmp_path / "c.json").write_text("{not json")
    rc, err = run_main(["--config", tmp_path / "c.json"], capsys)
    assert rc == 2 and "not valid JSON" in err and err.count("\n") == 1
    (tmp_path / "c.json").write_text(json.dumps({"lr": "fast"}))
    rc, err = run_main(["--config", tmp_path / "c.json"], capsys)
    assert rc == 2 and "lr: could not convert string to float: 'fast'" in err


def test_option_checks_raise_bad_input_and_flags_stay_argparse_errors(capsys):
    """Options' checks are bad input (BadInput, still a ValueError for callers around parsing); an
    argparse `type=` function turns it into argparse's own one-line error (exit 2)."""
    from training.loop import LoopConfig
    from utils.options import parse_float, parse_int

    for make in (lambda: LoopConfig(lr=-1.0), lambda: LoopConfig(lr=float("nan")), lambda: LoopConfig(batch=2.5),
                 lambda: parse_float("x"), lambda: parse_int("x")):
        with pytest.raises(BadInput):
            make()
    for flag, value, needle in (("--lr", "abc", "argument --lr: could not convert string to float: 'abc'"),
                                ("--lr", "-1", "argument --lr: must be > 0"),
                                ("--batch", "x", "argument --batch: must be an integer"),
                                ("--seed", str(2**70), "argument --seed: must fit in 64 bits")):
        rc, err = run_main(["--model_name", "m", flag, value], capsys)
        assert rc == 2 and needle in err and err.count("\n") == 1, err


def test_the_domain_errors_are_bad_input():
    from analysis.paired import PairingError
    from analysis.runs import ResultsError
    from data.commonsense import DataError

    assert all(issubclass(c, BadInput) for c in (DataError, PairingError, ResultsError))
    assert issubclass(BadInput, ValueError)


def test_a_user_file_that_is_missing_is_bad_input_naming_it(tmp_path):
    from models.adapter import load_checked, read_adapter_config
    from models.export import checkpoint_kind
    from utils.runs import run_args

    for call, name in ((lambda: run_args(tmp_path, "--resume"), str(tmp_path)),
                       (lambda: checkpoint_kind(tmp_path), str(tmp_path)),
                       (lambda: read_adapter_config(tmp_path), str(tmp_path)),
                       (lambda: load_checked(tmp_path / "a.safetensors"), "a.safetensors")):
        with pytest.raises(BadInput, match=name.replace("\\", "\\\\")):
            call()


def test_internal_argument_checks_stay_plain_errors():
    """Checks of what our own code passes (not of what a user gave) are not bad input."""
    from eval.metrics import wilson_interval
    from models.methods.registry import register
    from models.methods import REGISTRY

    with pytest.raises(ValueError) as e:
        wilson_interval(3, 2)
    assert not isinstance(e.value, BadInput)
    with pytest.raises(ValueError) as e:
        register(next(iter(REGISTRY.values())))
    assert not isinstance(e.value, BadInput)


def test_analyze_results_prints_bad_input_and_lets_a_bug_through(tmp_path, monkeypatch, capsys):
    import analyze_results

    assert analyze_results.main([str(tmp_path / "absent")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file or folder" in err
    monkeypatch.setattr(analyze_results, "summarize", lambda *a, **k: (_ for _ in ()).throw(ValueError("internal")))
    with pytest.raises(ValueError, match="^internal$"):
        analyze_results.main([str(tmp_path)])
