"""The import graph of `vicuna_jax`: no cycle between modules, none between packages, and the layer order of
DESIGN.md ("Layers").

Every import counts, wherever it is written: at module level, inside a function (an import moved into a
function to dodge a cycle is still the same dependency), `import a.b`, `from a.b import c` (an edge to
`a.b.c` when that is a module, else to `a.b`), relative imports, and `importlib.import_module` of our
modules (a literal name, or, in a module that imports a computed name, every literal naming one of our
modules: the `_LAZY` tables of package `__init__`s). Importing `a.b.c` also runs `a/__init__` and
`a/b/__init__`; those implicit edges are left out, since a package's `__init__` importing its own children
would otherwise make every package a cycle.

The package of `vicuna_jax.x.y` is `vicuna_jax.x`; a top-level module `vicuna_jax.z` is its own package.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
from collections import defaultdict

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = "vicuna_jax"

# DESIGN.md "Layers", lowest first. A package may import packages of its own layer and of layers below it,
# never of a layer above (cycles inside a layer are caught by the package-cycle test).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("vicuna_jax", "vicuna_jax.cli", "vicuna_jax.fileio", "vicuna_jax.parallel",
                "vicuna_jax.hardware")),  # hardware: chip figures, compile-only TPU topologies, roofline
    ("data", ("vicuna_jax.data",)),  # tokenizers, chat format, templates, encode, pack, store, loader
    ("model", ("vicuna_jax.model",)),  # config, modules, attention backends, the loss
    ("checkpoint", ("vicuna_jax.checkpoint", "vicuna_jax.convert")),  # orbax items; HF in/out
    ("lora", ("vicuna_jax.lora",)),  # adapters on a model; PEFT in/out
    ("train", ("vicuna_jax.train",)),
    ("inference", ("vicuna_jax.load", "vicuna_jax.decoding", "vicuna_jax.generate", "vicuna_jax.chat",
                   "vicuna_jax.serve", "vicuna_jax.eval")),
    ("tools", ("vicuna_jax.bench",)),  # benchmarks: may use anything
]

# Packages held to less than their layer allows: all they may import of ours besides themselves.
ONLY: dict[str, tuple[str, ...]] = {
    "vicuna_jax.model": ("vicuna_jax.cli", "vicuna_jax.fileio", "vicuna_jax.parallel"),
}

LAYER_OF = {pkg: (rank, name) for rank, (name, pkgs) in enumerate(LAYERS) for pkg in pkgs}


# ----------------------------------------------------------------------------------------- the graph


@dataclasses.dataclass(frozen=True)
class Import:
    src: str  # importing module
    dst: str  # imported module
    path: str  # file of src, relative to the repository
    line: int
    in_function: bool

    def __str__(self) -> str:
        where = " (inside a function)" if self.in_function else ""
        return f"{self.path}:{self.line}  {self.src} -> {self.dst}{where}"


def find_modules(package_dir: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
    """Dotted module name -> file, for every .py under package_dir (`__init__.py` names its package)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _deepest_module(name: str, modules: dict[str, pathlib.Path]) -> str | None:
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, modules: dict[str, pathlib.Path]):
        self.module, self.modules = module, modules
        self.here = module if is_package else module.rpartition(".")[0]  # what `from . import` means
        self.found: list[tuple[str, int, bool]] = []  # (target name, line, in a function)
        self.literals: list[tuple[str, int, bool]] = []
        self.dynamic_import = False
        self.depth = 0

    def _add(self, name: str, node: ast.AST) -> None:
        self.found.append((name, node.lineno, self.depth > 0))

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.here.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            self._add(sub if sub in self.modules else base, node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("import_module", "__import__") and node.args:
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                self._add(arg.value, node)
            else:
                self.dynamic_import = True
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and node.value in self.modules:
            self.literals.append((node.value, node.lineno, self.depth > 0))


def import_edges(package_dir: pathlib.Path, package: str, root: pathlib.Path) -> list[Import]:
    """Every import of one of the package's modules by another (a module importing itself is left out)."""
    modules = find_modules(package_dir, package)
    edges = []
    for module, path in modules.items():
        collector = _Collector(module, path.name == "__init__.py", modules)
        collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        found = collector.found + (collector.literals if collector.dynamic_import else [])
        rel = path.relative_to(root).as_posix()
        for name, line, in_function in found:
            target = _deepest_module(name, modules)
            if target is not None and target != module:
                edges.append(Import(module, target, rel, line, in_function))
    return sorted(set(edges), key=lambda e: (e.path, e.line, e.dst))


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


# ----------------------------------------------------------------------------------------- cycles


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's components of more than one node, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def elementary_cycles(graph: dict[str, set[str]], component: list[str], limit: int) -> list[list[str]]:
    """Up to `limit` simple cycles inside `component`, each starting at its smallest node."""
    order = {v: k for k, v in enumerate(component)}
    cycles: list[list[str]] = []

    def walk(start: str, path: list[str]) -> None:
        for w in sorted(graph[path[-1]]):
            if len(cycles) >= limit:
                return
            if w == start:
                cycles.append([*path, start])
            elif w in order and order[w] > order[start] and w not in path:
                walk(start, [*path, w])

    for start in component:
        walk(start, [start])
    cycles.sort(key=lambda c: (len(c), c))
    return cycles


def cycle_report(kind: str, edges: list[Import], node_of, limit: int = 40) -> str:
    """'' when the graph of `node_of(module)` nodes has no cycle; else each cycle and its imports."""
    graph: dict[str, set[str]] = defaultdict(set)
    by_pair: dict[tuple[str, str], list[Import]] = defaultdict(list)
    for e in edges:
        a, b = node_of(e.src), node_of(e.dst)
        if a != b:
            graph[a].add(b)
            graph.setdefault(b, set())
            by_pair[a, b].append(e)
    lines = []
    for component in strongly_connected(graph):
        cycles = elementary_cycles(graph, component, limit)
        more = f" (the first {limit}; there are more)" if len(cycles) >= limit else ""
        lines.append(f"{kind} cycle among {len(component)} {kind}s: {', '.join(component)}")
        lines.append(f"  {len(cycles)} cycle(s){more}:")
        lines += [f"    {' -> '.join(c)}" for c in cycles]
        lines.append("  the imports that make them:")
        pairs = sorted({(c[k], c[k + 1]) for c in cycles for k in range(len(c) - 1)})
        for a, b in pairs:
            lines.append(f"    {a} -> {b}")
            lines += [f"        {e}" for e in by_pair[a, b]]
    return "\n".join(lines)


def layer_violations(edges: list[Import]) -> list[str]:
    out = []
    for e in edges:
        src, dst = package_of(e.src), package_of(e.dst)
        if src == dst or src not in LAYER_OF or dst not in LAYER_OF:
            continue
        (src_rank, src_layer), (dst_rank, dst_layer) = LAYER_OF[src], LAYER_OF[dst]
        if dst_rank > src_rank:
            out.append(f"{e}\n      {src} ({src_layer} layer) imports {dst} ({dst_layer} layer, above it)")
        elif src in ONLY and dst not in ONLY[src]:
            out.append(f"{e}\n      {src} may import only {', '.join(ONLY[src])} of ours")
    return out


# ----------------------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def edges() -> list[Import]:
    return import_edges(ROOT / PACKAGE, PACKAGE, ROOT)


def test_no_cycle_between_modules(edges):
    report = cycle_report("module", edges, lambda m: m)
    if report:
        pytest.fail("import cycles between modules:\n" + report, pytrace=False)


def test_no_cycle_between_packages(edges):
    report = cycle_report("package", edges, package_of)
    if report:
        pytest.fail("import cycles between packages:\n" + report, pytrace=False)


def test_every_package_has_a_layer():
    packages = {package_of(m) for m in find_modules(ROOT / PACKAGE, PACKAGE)}
    missing = sorted(packages - set(LAYER_OF))
    assert not missing, f"packages with no layer in LAYERS (add them): {missing}"


def test_layer_order(edges):
    violations = layer_violations(edges)
    if violations:
        order = " < ".join(name for name, _ in LAYERS)
        pytest.fail(f"{len(violations)} import(s) against the layer order (lowest first: {order}):\n  "
                    + "\n  ".join(violations), pytrace=False)


def test_the_collector_sees_every_kind_of_import(tmp_path):
    """The checks above are only as good as the import scan: each form it must see, on a made-up package."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "import pkg.b\n",
        "b.py": "from pkg.sub import c\n",  # c is a module: the edge goes to pkg.sub.c
        "sub/__init__.py": "NAME = 1\n",
        "sub/c.py": "from pkg.sub import NAME\n\ndef f():\n    from .. import d\n",
        "d.py": "def g():\n    import importlib\n    return importlib.import_module('pkg.e')\n",
        "e.py": "from .sub.c import f\n",
        "f.py": ("import importlib\n_LAZY = {'x': 'pkg.a'}\n\n"
                 "def __getattr__(n):\n    return importlib.import_module(_LAZY[n])\n"),
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    got = {(e.src, e.dst, e.line, e.in_function) for e in import_edges(pkg, "pkg", tmp_path)}
    assert got == {
        ("pkg.a", "pkg.b", 1, False),
        ("pkg.b", "pkg.sub.c", 1, False),
        ("pkg.sub.c", "pkg.sub", 1, False),
        ("pkg.sub.c", "pkg.d", 4, True),
        ("pkg.d", "pkg.e", 3, True),
        ("pkg.e", "pkg.sub.c", 1, False),
        ("pkg.f", "pkg.a", 2, False),
    }
    report = cycle_report("module", import_edges(pkg, "pkg", tmp_path), lambda m: m)
    assert "pkg.d -> pkg.e -> pkg.sub.c -> pkg.d" in report and "pkg/d.py:3" in report
