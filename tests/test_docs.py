"""The docs stay true (issue 28): README.md and docs/*.md (not docs/experiments/, the experiments' records)
name only flags the command lines define and repository paths that exist.

- Fenced code: every line that runs one of this project's command lines (backslash continuations joined)
  passes only flags that command line defines; train_knowhira.py's come from its own parser.
- Prose: every `--flag` in backticks is a flag of one of the command lines, or of an external tool
  (EXTERNAL_FLAGS: torchrun, pytest, pip).
- Paths: every markdown link target exists relative to the doc's folder; every backticked token that looks
  like a repository path exists relative to the repository root (see repo_path below for what counts).
Fast and light: no model is loaded (train_knowhira.build_parser() reads the option dataclasses).
"""
import re
import shlex
from pathlib import Path

import train_knowhira

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# the other command lines: their flags are the string literals opening their add_argument calls
OTHER_CLIS = ["analyze_results.py", "analyze_adapter.py", "scripts/sweep_table.py", "scripts/knowledge_rules.py",
              "scripts/bench/run.py", "scripts/memory_estimate.py", "tests/robustness/probe.py",
              "download_all_eval_datasets.py", "data/download.py"]
EXTERNAL_FLAGS = {"--nproc_per_node", "--nnodes", "--node_rank", "--rdzv_endpoint", "--rdzv_backend",
                  "--standalone", "--dist", "--durations", "--index-url", "--extra-index-url", "--upgrade"}
EXTENSIONS = (".py", ".sh", ".md", ".json", ".txt", ".yml")
NOT_REPO = ("http", "runs/", "weights/", "~", "/", "$", "../")   # outputs, home, absolute, outside the repo
PLACEHOLDER = re.compile(r"[<>{}*|$=:,\[\]]|\.\.\.|…")
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
INLINE = re.compile(r"`([^`]+)`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def cli_flags() -> dict:
    flags = {"train_knowhira.py": set(train_knowhira.build_parser()._option_string_actions)}
    for cli in OTHER_CLIS:
        src = (ROOT / cli).read_text()
        found = set()
        for m in re.finditer(r"add_argument\(\s*((?:[\"']-[^\"']*[\"']\s*,\s*)+)", src):
            found |= set(FLAG.findall(m.group(1)))
        flags[cli] = found | {"--help", "-h"}          # knowledge_rules.py has positional arguments only
    flags["scripts/bench"] = flags["scripts/bench/run.py"]          # python -m scripts.bench
    for script in sorted((ROOT / "scripts").glob("*.sh")):  # a shell script's own flags: [ "$1" = --dry ]
        flags[f"scripts/{script.name}"] = set(re.findall(r"=\s*(--[a-z][a-z_]*)\s*\]", script.read_text()))
    return flags


def ignored_prefixes() -> tuple:
    """What git ignores (data/commonsense/, results/, ...) is made by running, not kept in the repository."""
    lines = (ROOT / ".gitignore").read_text().split()
    return tuple(line.strip("/") for line in lines if "*" not in line and not line.startswith("."))


def repo_path(token: str, alone: bool, ignored: tuple):
    """The repository path a backticked token names, or None. No placeholders, outputs or paths outside the
    repository; `models/...`, `.ci/run`: starts with a top-level entry of the repository; a bare file name
    with a code or doc extension (not a run's .json) counts when it is the whole span (inside a command it
    may be a cwd's file); `training/loop.OutputHead` names training/loop.py."""
    if not token or PLACEHOLDER.search(token) or token.startswith(NOT_REPO) or token.startswith(ignored):
        return None
    if "/" not in token:
        return token if alone and token.endswith(EXTENSIONS) and not token.endswith(".json") else None
    if not (ROOT / token.split("/")[0]).exists():
        return None
    suffix = Path(token).suffix
    return token[: -len(suffix)] + ".py" if suffix[1:2].isupper() else token


def commands(block: str):
    """The logical lines of a fenced block (backslash continuations joined), split into shell commands."""
    for line in block.replace("\\\n", " ").split("\n"):
        try:
            tokens = shlex.split(line, comments=True)
        except ValueError:                    # an unbalanced quote: fall back to whitespace
            tokens = line.split("#")[0].split()
        cmd = []
        for tok in tokens + [";"]:
            if tok in (";", "&&", "||", "|"):
                yield cmd
                cmd = []
            else:
                cmd.append(tok)


def invoked(cmd: list):
    """(which command line, its arguments) when cmd runs one of ours: `python X.py ...`, `python -m X ...`."""
    for i, tok in enumerate(cmd[:-1]):
        if not re.fullmatch(r"(\S*/)?(python3?|torchrun)", tok):
            continue
        rest = [t for t in cmd[i + 1:] if not t.startswith("-") or t == "-m"]
        if rest[:1] == ["-m"] and len(rest) > 1:            # a module: its file, or its package's folder
            module = rest[1].replace(".", "/")
            module += ".py" if (ROOT / f"{module}.py").exists() else ""
            return module, cmd[cmd.index(rest[1], i) + 1:]
        script = next((t for t in cmd[i + 1:] if t.endswith(".py")), None)
        return (script, cmd[cmd.index(script) + 1:]) if script else (None, [])
    return None, []


def check_doc(path: Path, text: str, flags: dict, ignored: tuple) -> list:
    """Every problem of one doc, as 'file: what'."""
    problems, name = [], str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name
    known = set().union(*flags.values()) | EXTERNAL_FLAGS
    for block in FENCE.finditer(text):
        for cmd in commands(block.group(0)):
            cli, args = invoked(cmd)
            if cli in flags:
                for arg in args:
                    flag = arg.split("=")[0]
                    if FLAG.fullmatch(flag) and flag not in flags[cli]:
                        problems.append(f"{name}: {cli} has no flag {flag}: {' '.join(cmd)}")
    prose = FENCE.sub("", text)
    for span in INLINE.findall(prose):
        for flag in FLAG.findall(span):
            if flag not in known:
                problems.append(f"{name}: no command line has the flag {flag} (`{span}`)")
        tokens = span.split()
        for token in tokens:
            where = repo_path(token.strip("\"'(),;.").rstrip(":"), len(tokens) == 1, ignored)
            if where and not (ROOT / where).exists():
                problems.append(f"{name}: no such path `{where}` (from the repository root)")
    for target in LINK.findall(prose):
        target = target.split("#")[0]
        if target and not target.startswith(("http:", "https:", "mailto:")) and not (path.parent / target).exists():
            problems.append(f"{name}: link to a missing file {target}")
    return problems


def test_docs_name_existing_flags_and_paths():
    flags, ignored = cli_flags(), ignored_prefixes()
    assert "--peft_type" in flags["train_knowhira.py"] and "--baseline" in flags["analyze_results.py"]
    problems = [p for doc in DOCS for p in check_doc(doc, doc.read_text(), flags, ignored)]
    assert not problems, "\n".join(problems)


def test_the_check_finds_a_renamed_flag_and_a_missing_path(tmp_path):
    doc = tmp_path / "bad.md"
    doc.write_text("Train with `--lr_rate 1e-3`; the loop is `training/no_such_loop.py`, see [it](gone.md).\n\n"
                   "```bash\npython train_knowhira.py --model_name M \\\n    --r_ab 8 --ortho_lambd 0.1\n```\n")
    found = check_doc(doc, doc.read_text(), cli_flags(), ignored_prefixes())
    problems = "\n".join(found)
    assert len(found) == 4, problems                    # --model_name and --r_ab are known
    assert "flag --lr_rate" in problems
    assert "train_knowhira.py has no flag --ortho_lambd" in problems
    assert "no such path `training/no_such_loop.py`" in problems
    assert "link to a missing file gone.md" in problems
