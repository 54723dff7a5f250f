"""requirements.txt lists exactly what the code imports at run time, and requirements-dev.txt what only the
tests (and the optional trackers) need.

Run time = every project file outside tests/ (the packages, the top-level commands and scripts/, whose
benchmark and tables are user commands too). Each module's top-level import name is mapped to the
distribution that installs it (importlib.metadata). One runtime requirement is imported by our code's
libraries, not by it: INDIRECT says why. The --report_to trackers other than tensorboard (wandb, mlflow,
trackio) are imported by accelerate only when asked for and are optional for users: they live in
requirements-dev.txt, where tests/test_trackers.py reads them back.
"""
import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

from test_packaging import ROOT, project_files

INDIRECT = {
    "tensorboard": "the default --report_to tensorboard: accelerate's tracker writes through torch.utils.tensorboard",
}
# optional at run time: imported only by the named file, inside `try: ... except ImportError` (a skip), and
# installed by requirements-dev.txt
OPTIONAL = {
    "lm-eval": ("scripts/bench/peer_eval.py", "benchmark section (h) times our cloze scoring against lm-eval's HFLM "
                                              "and is skipped without it"),
}
# imported by tests but installed by a runtime requirement (tokenizers: transformers) or optional for the
# test that imports it (flash_attn: tests/test_attn_implementation.py skips without it)
TEST_EXTRA = {"tokenizers", "flash-attn"}


def names(path: Path) -> set[str]:
    """Normalised distribution names of a requirements file (-r lines and comments skipped)."""
    out = set()
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            out.add(normalise(re.split(r"[<>=!~\[; ]", line)[0]))
    return out


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported(files) -> dict[str, set[str]]:
    """{distribution: files importing it} over the third-party imports of `files` (absolute imports whose
    top-level module is neither the standard library's nor the project's)."""
    local = {p.stem for p in ROOT.glob("*.py")} | {p.name for p in ROOT.iterdir() if p.is_dir()} | {"conftest"}
    local |= {p.stem for p in (ROOT / "tests").rglob("*.py")}
    dists = packages_distributions()
    found = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                tops = [node.module.split(".")[0]]
            else:
                continue
            for top in tops:
                if top in sys.stdlib_module_names or top in local:
                    continue
                dist = normalise(dists.get(top, [top])[0])
                found.setdefault(dist, set()).add(str(path.relative_to(ROOT)))
    return found


def runtime_files():
    return [p for p in project_files() if p.relative_to(ROOT).parts[0] != "tests"]


def test_requirements_txt_is_exactly_the_runtime_imports():
    runtime = imported(runtime_files())
    required = names(ROOT / "requirements.txt")
    optional = {d for d, files in runtime.items() if d in OPTIONAL and files == {OPTIONAL[d][0]}}
    assert optional <= names(ROOT / "requirements-dev.txt"), "an OPTIONAL import must be in requirements-dev.txt"
    missing = {d: sorted(files) for d, files in runtime.items() if d not in required | optional}
    assert not missing, f"imported at run time but not in requirements.txt: {missing}"
    unused = required - set(runtime) - set(INDIRECT)
    assert not unused, f"in requirements.txt but imported nowhere outside tests/ (and not INDIRECT): {unused}"
    assert not set(INDIRECT) & set(runtime), "an INDIRECT requirement is imported directly now: drop it from INDIRECT"
    assert {"torch", "transformers", "accelerate", "peft", "datasets"} <= required  # the check sees the real file


def test_the_tests_need_nothing_beyond_the_two_files():
    tests = [p for p in project_files() if p.relative_to(ROOT).parts[0] == "tests"]
    dev, required = names(ROOT / "requirements-dev.txt"), names(ROOT / "requirements.txt")
    extra = set(imported(tests)) - dev - required - TEST_EXTRA
    assert not extra, f"imported by tests only, not in requirements-dev.txt: {extra}"
    assert not dev & required, "a package is in both files"
    assert "-r requirements.txt" in (ROOT / "requirements-dev.txt").read_text()
