"""The house shows its architecture: layers (import-linter, run by .ci/run), no import circles, small modules,
imports at the top, and a Python API that costs nothing to import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp

from conftest import ROOT

PACKAGE = ROOT / "fer_core"
#: Optional heavy libraries a module may import inside the function that needs them (the one module that does).
LAZY_OK = {
    "onnx",
    "onnxruntime",
    "ray",
    "av",
    "streamlit_webrtc",
    "kaleido",
    "plotly",
    "torchvision",
    "playwright",
    "torch_pruning",
}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(), str(path))


def test_every_package_says_what_it_owns_and_what_it_may_import():
    for init in sorted(PACKAGE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) > 150 and ("import" in doc), f"{init.relative_to(ROOT)}: docstring must say both"
        tree = ast.parse(init.read_text())
        if init.parent.name not in ("common", "models", "cli"):  # those hold code; the others only describe
            imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
            assert not imports, f"{init.relative_to(ROOT)} imports: using one module would load the whole package"


def test_no_module_over_500_lines():
    long = {str(p.relative_to(ROOT)): n for p, _ in _modules() if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long


def test_imports_inside_functions_are_only_optional_heavy_libraries():
    bad = []
    for path, tree in _modules():
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = ["." * node.level + (node.module or "")]
                else:
                    continue
                if any(n.split(".")[0] not in LAZY_OK for n in names):
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {', '.join(names)}")
    assert not bad, bad


def test_no_import_circles_counting_imports_inside_functions():
    graph = grimp.build_graph("fer_core")  # every import statement, wherever it is
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for m in sorted(edges):
        if m not in index:
            visit(m)
    assert not cycles, cycles


def test_the_layer_contract_catches_an_upward_import(tmp_path):
    """The contract in pyproject.toml is not decoration: a copy of the package with one upward import fails it."""
    import shutil

    copy = tmp_path / "fer_core"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    runs = copy / "store" / "runs.py"
    runs.write_text(runs.read_text() + "\nfrom fer_core.serving.models import load_model  # noqa: E402\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    lint = [str(Path(sys.executable).parent / "lint-imports")]
    clean = subprocess.run([*lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True)
    assert clean.returncode == 0, clean.stdout[-2000:]
    broken = subprocess.run([*lint, "--no-cache"], cwd=tmp_path, capture_output=True, text=True)
    assert broken.returncode != 0
    assert "fer_core.store is not allowed to import fer_core.serving" in broken.stdout


def test_import_fer_core_is_instant_and_the_api_resolves():
    code = (
        "import sys, fer_core\n"
        "assert not {'torch', 'pandas', 'cv2', 'streamlit', 'plotly', 'ray'} & set(sys.modules), sorted(sys.modules)\n"
        "missing = [n for n in fer_core.__all__ if getattr(fer_core, n, None) is None]\n"
        "assert not missing, missing\n"
        "api = {n: getattr(fer_core, n) for n in fer_core.__all__}\n"
        "undocumented = [n for n, v in api.items() if callable(v) and not v.__doc__]\n"
        "assert not undocumented, undocumented\n"
        "assert set(fer_core._API) <= set(fer_core.__all__)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_each_command_runs_with_only_its_own_group_loaded():
    """`COMMANDS` says which group module registers each command: a command in the wrong row would fail."""
    import argparse

    from fer_core.cli import COMMANDS, build_parser

    def choices(p: argparse.ArgumentParser) -> list[str]:
        return list(next(a for a in p._actions if a.dest == "command").choices)

    assert choices(build_parser()) == list(COMMANDS)
    for command, group in COMMANDS.items():
        assert command in choices(build_parser(command)), f"{command} is not registered by cli/{group}.py"
