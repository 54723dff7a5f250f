"""The project's import path without `sys.path.insert`: pyproject.toml names every package and top-level
module (so `pip install -e .` makes each importable, and its console commands call existing functions),
and the command lines run as documented from the repository root with nothing installed."""
import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
NOT_PROJECT = (".venv", ".git", "weights", "runs", "build")


def project_files(pattern="*.py"):
    """The project's files matching `pattern`, the virtual environment and run outputs left out."""
    tops = [p for p in ROOT.iterdir() if p.is_dir() and not p.is_symlink() and p.name not in NOT_PROJECT]
    return [*ROOT.glob(pattern), *(f for top in tops for f in top.rglob(pattern))]


def test_no_file_changes_sys_path():
    """The interpreter's own rules and the editable install put the root on sys.path, never the code."""
    edits = re.compile(r"sys\.path\.(insert|append|extend)\(|sys\.path\s*(\+?=)")
    found = [f"{p.relative_to(ROOT)}:{i}" for p in project_files()
             for i, line in enumerate(p.read_text().splitlines(), 1) if edits.search(line)]
    assert not found, found


def test_pyproject_names_every_package_and_top_level_module():
    setup = PYPROJECT["tool"]["setuptools"]
    packages = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in project_files("__init__.py")
                if p.parent != ROOT and p.relative_to(ROOT).parts[0] not in ("scripts", "tests")}
    assert set(setup["packages"]) == packages
    assert {"models", "models.methods", "data", "eval", "training", "analysis", "utils"} <= packages
    assert set(setup["py-modules"]) == {p.stem for p in ROOT.glob("*.py")}
    assert PYPROJECT["tool"]["pytest"]["ini_options"]["pythonpath"] == ["."]


@pytest.mark.parametrize("name", sorted(PYPROJECT["project"]["scripts"]))
def test_console_commands_name_a_main_that_exists(name):
    module, function = PYPROJECT["project"]["scripts"][name].split(":")
    tree = ast.parse((ROOT / f"{module}.py").read_text())
    assert function in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, name


@pytest.mark.parametrize("command", [["analyze_results.py", "--help"], ["-m", "scripts.sweep_table", "--help"],
                                     ["-m", "scripts.knowledge_rules", "--help"]])
def test_command_lines_run_from_the_root_with_nothing_installed(command, tmp_path):
    """As the README, scripts/knowledge.sh and scripts/showcase.sh call them; `-I`-like: no PYTHONPATH,
    and the project not installed in this interpreter (its packages come from the root the command runs in)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run([sys.executable, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
    # and the same file run from another folder fails only for want of an install, not silently elsewhere
    if command[0] == "analyze_results.py":
        away = subprocess.run([sys.executable, str(ROOT / command[0]), "--help"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert away.returncode == 0, away.stderr  # a top-level script's folder is on sys.path wherever it runs


def test_the_scripts_call_the_scripts_as_modules():
    """knowledge.sh and showcase.sh run the Python scripts that import the project as `python -m scripts.x`."""
    for sh in ("knowledge.sh", "showcase.sh"):
        text = (ROOT / "scripts" / sh).read_text()
        assert not re.search(r'"\$PY" scripts/(sweep_table|knowledge_rules)\.py', text), sh
        assert '"$PY" -m scripts.sweep_table' in text, sh
