"""Option values, wherever they come from: the Python API and edited args.json files are type-checked, and
a --config file's keys, types and values are checked as the flags' own text would be (utils/options.py)."""
import re

import pytest

from conftest import run_main
from models.get_models import ModelOptions
from models.methods.knowhira import KnowHiRAConfig
from training.loop import LoopConfig


@pytest.mark.parametrize("cls,values,needle", [
    (LoopConfig, {"batch": None}, "batch: must be an int, got NoneType None"),
    (LoopConfig, {"batch": True}, "batch: must be an int, got bool True"),
    (LoopConfig, {"batch": 2.5}, "batch: must be an int, got float 2.5"),
    (LoopConfig, {"lr": "1e-3x"}, "lr: could not convert string to float"),
    (KnowHiRAConfig, {"r_ab": 3.5}, "r_ab: must be an int, got float 3.5"),
    (ModelOptions, {"gguf_file": 7}, "gguf_file: must be a str, got int 7"),
    (KnowHiRAConfig, {"target_modules": [1, 2]}, "target_modules: must be a list of names (strings), got [1, 2]"),
])
def test_option_values_are_type_checked(cls, values, needle):
    """Options built from Python or from an (edited) args.json are checked for type, not only range."""
    with pytest.raises(ValueError, match=re.escape(needle)):
        cls(**values)


def test_an_int_is_a_float_value_and_text_is_parsed():
    assert LoopConfig(lr=1).lr == 1 and LoopConfig(lr="2e-3").lr == 2e-3 and LoopConfig(batch="3").batch == 3


@pytest.mark.parametrize("content,needle", [
    ('{"lrr": 1}', "unknown key 'lrr' (not a flag of train_knowhira.py)"),
    ('{"lr": [1]}', "lr: must be a float, got list [1]"),
    ('{"max_steps": 2.5}', "max_steps: must be an int, got float 2.5"),
    ('{"lr": -1}', "lr: must be > 0, got -1"),
    ('{"lr": "fast"}', "lr: could not convert string to float"),
    ('{"ckpt": "runs/x"}', "ckpt: not a training flag"),
    ('[1, 2]', "expected an object of flag names and values, got list"),
    ('{"lr": ', "not valid JSON"),
])
def test_bad_config_is_a_one_line_error(content, needle, tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(content)
    rc, err = run_main(["--config", config, "--output_folder", tmp_path / "runs"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1
    line = lines[0]
    assert line.startswith(f"error: {config}: ") and needle in line, line
    assert not (tmp_path / "runs").exists()
