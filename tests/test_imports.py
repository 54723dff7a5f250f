"""Imports flow one way: no cycle among the project's modules, counting imports inside functions too
(a function-level import only postpones a cycle; it does not remove it). Static: the files are parsed,
nothing is imported."""
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("analysis", "data", "eval", "models", "training", "utils")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    files = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")] + sorted(ROOT.glob("*.py"))
    return {module_name(p): p for p in files}


def imports_of(path: Path, modules: dict) -> set[str]:
    """The project modules `path` imports anywhere in it ("from a.b import c" counts a.b.c when that is a
    module, else a.b)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name in modules}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
            found |= subs or ({node.module} & modules.keys())
    return found - {module_name(path)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_detector_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    modules = project_modules()
    graph = {name: imports_of(path, modules) for name, path in modules.items()}
    assert cycles(graph) == []


def _module_imports(tree: ast.Module, modules: dict) -> dict[str, str]:
    """name -> project module, for the module-level imports that bind a project module to a name."""
    bound = {}
    for node in tree.body:
        if isinstance(node, ast.Import):
            bound.update({a.asname: a.name for a in node.names if a.asname and a.name in modules})
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            bound.update({a.asname or a.name: f"{node.module}.{a.name}" for a in node.names
                          if f"{node.module}.{a.name}" in modules})
    return bound


def shadowing(path: Path, modules: dict) -> list[str]:
    """Where `path` binds a project module to a standard-library module's name (`from models import adapter
    as io`), and where a function's argument or local variable takes the name of a project module the file
    imports (a local `options` in a file that imports utils.options)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    packages = {m.split(".")[0] for m in modules}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                source = a.name if isinstance(node, ast.Import) else node.module or ""
                if a.asname in sys.stdlib_module_names and source.split(".")[0] in packages:
                    found.append(f"{path.name}:{node.lineno}: {a.name} as {a.asname}")
    imported = _module_imports(tree, modules)
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names = {a.arg for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs}
            names |= {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
            found += [f"{path.name}:{fn.lineno}: {fn.name} binds {n}, the module {imported[n]}"
                      for n in sorted(names & imported.keys())]
    return found


def test_the_shadowing_detector_finds_both_kinds(tmp_path):
    modules = project_modules()
    (tmp_path / "a.py").write_text("from models import adapter as io\nimport io as stdlib_io\n")
    (tmp_path / "b.py").write_text("from utils import options\n\n\ndef f(x):\n    options = x\n")
    assert shadowing(tmp_path / "a.py", modules) == ["a.py:1: adapter as io"]
    assert shadowing(tmp_path / "b.py", modules) == ["b.py:4: f binds options, the module utils.options"]


def test_no_name_shadows_a_module():
    """Issue 29 defect 9: `from models import adapter as io` hid the standard library's io."""
    modules = project_modules()
    assert [f for path in modules.values() for f in shadowing(path, modules)] == []
