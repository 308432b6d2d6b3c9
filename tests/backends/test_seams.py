"""The seams hold: outside deployq/backends/ no code asks which backend it holds.

Scans the source (ast, no imports) for: comparisons with a backend's name, hasattr /
getattr probes, imports of a backend module other than through backends.get, and the
file names of backend artifacts. A capability is asked with backends.supports; a
backend's extra figures come from backends.extras."""
import ast
import sys
from pathlib import Path

import pytest

from deployq import backends, targets as T

ROOT = Path(__file__).resolve().parents[2] / "deployq"
BACKENDS = ROOT / "backends"
NAMES = {p.stem for p in BACKENDS.glob("*.py")} - {"__init__", "crunner"}
# getattr/hasattr calls that are no capability probes: (file, object) -> reason
ALLOWED_PROBES = {
    ("__init__.py", "api"): "the lazy top-level API (module __getattr__)",
    ("graph.py", "program"): "torch.export programs without 'constants'",
    ("graph.py", "x"): "fx nodes vs constants in a pattern match",
    ("models.py", "mod"): "the user's factory function by name",
    ("targets.py", "target"): "a target file's sections by name",
    ("fixedpoint.py", "o"): "fixed-point options by key",
    ("runtime.py", "lib"): "ctypes functions declared by name",
    ("cli.py", "click.exceptions"): "NoArgsIsHelpError exists from click 8.2 on",
    ("robustness.py", "self"): "a strength preset fills the Config fields left unset",
}
# a module outside backends/ that is part of a backend: file -> reason
BACKEND_HELPERS: dict[str, str] = {
    "hls4ml_export.py": "the fpga backend's hls4ml project writer (hook hls4ml_project)",
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(tree, module: str, package: str, known: set[str]) -> set[str]:
    """deployq modules a module imports anywhere (also inside functions)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] \
                if node.level else []
            origin = ".".join(base + ([node.module] if node.module else []))
            out |= {f"{origin}.{a.name}" if f"{origin}.{a.name}" in known else origin
                    for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m in known and m != module}


def import_graph() -> dict[str, set[str]]:
    paths = {_module(p): p for p in ROOT.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        graph[name] = _imported(ast.parse(path.read_text()), name, package, set(paths))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each set of modules that import each other, directly or not (a path back)."""
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()] - seen:
                seen.add(nxt)
                todo.append(nxt)
        return seen
    reachable = {m: reach(m) for m in graph}
    groups = {frozenset(n for n in reachable[m] if m in reachable[n]) | {m}
              for m in graph if m in reachable[m]}
    return sorted(sorted(g) for g in groups)


def _sources():
    for path in sorted(ROOT.rglob("*.py")):
        if BACKENDS not in path.parents:
            yield path, ast.parse(path.read_text(), str(path))


def _artifact_names() -> set[str]:
    """Module-level string constants of backend modules that name a file."""
    names = set()
    for path in BACKENDS.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str) and "." in node.value.value):
                names.add(node.value.value)
    return names


def _probes(tree, rel: str) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in ("hasattr", "getattr") and node.args):
            obj = ast.unparse(node.args[0])
            if (rel, obj) not in ALLOWED_PROBES:
                out.append(f"{rel}:{node.lineno} {node.func.id}({obj}, ...)")
    return out


def _named(expr) -> bool:
    """A backend's name, or a collection holding one."""
    if isinstance(expr, (ast.Tuple, ast.List, ast.Set)):
        return any(_named(e) for e in expr.elts)
    return isinstance(expr, ast.Constant) and expr.value in NAMES


def _backend_names(tree, rel: str) -> list[str]:
    """Comparisons with a backend's name and tables keyed by one (a label in a
    message is no check)."""
    out = []
    for node in ast.walk(tree):
        operands = ([node.left, *node.comparators] if isinstance(node, ast.Compare) else
                    [k for k in node.keys if k is not None] if isinstance(node, ast.Dict)
                    else [])
        if any(_named(e) for e in operands):
            out.append(f"{rel}:{node.lineno} {ast.unparse(node)[:60]}")
    return out


def _imports(tree, rel: str) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            mod = node.module.split(".")
            if "backends" in mod and (mod[-1] in NAMES or {a.name for a in node.names} & NAMES):
                out.append(f"{rel}:{node.lineno} from {node.module} import ...")
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith("deployq.backends."):
            out.append(f"{rel}:{node.lineno} '{node.value}'")
    return out


def _artifacts(tree, rel: str, names: set[str]) -> list[str]:
    return [f"{rel}:{node.lineno} '{node.value}'" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and node.value in names]


def _all(check) -> list[str]:
    found = []
    for path, tree in _sources():
        rel = str(path.relative_to(ROOT))
        found += check(tree, rel) if rel not in BACKEND_HELPERS else []
    return found


def test_no_backend_name_checks_outside_backends():
    assert _all(_backend_names) == []


def test_no_capability_probes_outside_backends():
    assert _all(_probes) == [], "declare the capability in the backend's CAPABILITIES " \
        "and ask backends.supports"


def test_backend_modules_only_through_backends_get():
    assert _all(_imports) == []


def test_no_backend_artifact_names_outside_backends():
    names = _artifact_names()
    assert "footprint.json" in names and "model.tflite" in names
    assert _all(lambda tree, rel: _artifacts(tree, rel, names)) == []


def test_no_import_cycles():
    """Function-level imports count: report.write importing htmlreport, which imported
    report, was a cycle."""
    assert cycles(import_graph()) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("source, check, hits", [
    ("if t.backend == 'onnx': pass", _backend_names, 1),
    ("ok = t['backend'] in ('mcu', 'qemu')", _backend_names, 1),
    ("TIMERS = {'onnx': 'ORT profiler'}", _backend_names, 1),
    ("def f(backend='fpga'): pass", _backend_names, 0),
    ("x = getattr(runner, 'output_qp', None)", _probes, 1),
    ("from .backends.tflite import layer_of", _imports, 1),
    ("from .backends import mcu", _imports, 1),
    ("m = importlib.import_module('deployq.backends.fpga')", _imports, 1),
    ("from . import backends", _imports, 0),
])
def test_the_scan_finds_what_it_looks_for(source, check, hits):
    """Negative control: each check flags a planted example (and not the allowed form)."""
    assert len(check(ast.parse(source), "x.py")) == hits


def _importers(prefix: str) -> set[str]:
    """Files under deployq/ that import a module whose name starts with prefix."""
    out = set()
    for path in sorted(ROOT.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            if any(n == prefix or n.startswith(prefix + ".") for n in names):
                out.add(str(path.relative_to(ROOT)))
    return out


def test_one_module_imports_tensorflow_and_one_reads_tflite_files():
    assert _importers("tensorflow") == {"backends/tfgraph.py"}
    assert _importers("ai_edge_litert.schema_py_generated") == {"tflite_file.py"}
    private = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
               if "_get_ops_details" in p.read_text()]
    assert private == []


def _module_level_imports(name: str) -> tuple[set[str], set[str]]:
    """(deployq modules, other top-level packages) a module imports at module level."""
    paths = {_module(p): p for p in ROOT.rglob("*.py")}
    path = paths[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    body = [n for n in ast.parse(path.read_text()).body
            if isinstance(n, (ast.Import, ast.ImportFrom))]
    tree = ast.Module(body=body, type_ignores=[])
    outside = {a.name.partition(".")[0] for n in body if isinstance(n, ast.Import)
               for a in n.names}
    outside |= {n.module.partition(".")[0] for n in body
                if isinstance(n, ast.ImportFrom) and not n.level}
    return _imported(tree, name, package, set(paths)), outside - {"deployq", "__future__"}


def packages_needed(name: str) -> set[str]:
    """Third-party packages (besides numpy and torch) importing module `name` needs,
    through the deployq modules it imports at module level."""
    seen, todo, found = set(), [name], set()
    while todo:
        inner, outside = _module_level_imports(todo.pop())
        found |= outside
        todo += [m for m in inner - seen]
        seen |= inner
    return found - set(sys.stdlib_module_names) - {"numpy", "torch"}


@pytest.mark.parametrize("name", sorted(backends.PACKAGES))
def test_declared_packages_are_what_each_backend_imports(name):
    """backends.PACKAGES, which the sweep checks without importing a backend, lists
    exactly the packages importing the backend module needs."""
    assert set(backends.PACKAGES[name]) == packages_needed(f"deployq.backends.{name}")


def test_every_backend_declares_its_packages():
    modules = {n for n in T.backend_names() if n not in ("crunner", "tfgraph")}
    assert set(backends.PACKAGES) == modules


def test_the_package_scan_follows_deployq_imports():
    """Negative control: mcu imports ai_edge_litert only through backends.tflite."""
    assert "ai_edge_litert" not in _module_level_imports("deployq.backends.mcu")[1]
    assert "ai_edge_litert" in packages_needed("deployq.backends.mcu")
