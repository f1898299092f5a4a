"""The package's shape, read from its source: the layers of the pipeline and their order, no import circle,
modules and functions of a size a reader takes in, docstrings where a reader looks for them."""

import ast
from pathlib import Path

PQL = Path(__file__).resolve().parent.parent / "pql"

# Top to bottom: a module may import from the layers below its own, never from its own layer's other parts
# or from above. A part is a package folder of pql/ or a module at its root.
LAYERS = [
    ("pql.__main__",),  # python -m pql
    ("pql.cli",),  # the command line
    ("pql.report",),  # a study's runs -> tables, figures, markdown
    ("pql.bench",),  # the benchmarks and the GPU check (which time real runs, warm-started as studies are)
    ("pql.ablate",),  # a study's spec -> its matrix of cells, launched
    ("pql.training",),  # one run: its loop, sync and async trainers, sinks, failures and signals
    ("pql.workers", "pql.resolve"),  # PQL's machinery; a config resolved and checked
    ("pql.algos",),  # the registry of algorithms: policies, critic heads, objectives
    ("pql.envs", "pql.nets", "pql.buffers", "pql.normalizer", "pql.speed"),  # the building blocks
    ("pql.store", "pql.preload", "pql.exiting"),  # a run's files (directory, locks, manifest); a process's start, end
    ("pql.devices",),  # device resolution and names
    ("pql.config",),  # the schema, presets, keys and config files: nothing else of pql
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_ROOT_MODULES = 10


def modules() -> dict[str, Path]:
    """Every module of pql by dotted name (a package by its own name)."""
    out = {}
    for path in sorted(PQL.rglob("*.py")):
        parts = path.relative_to(PQL.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The pql modules ``name`` imports anywhere in its file (function-local imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("pql")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pql"):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in known}
    return {m for m in found if m in known and m != name}


def part(module: str) -> str:
    """The layer part a module belongs to: its package folder under pql, or itself at the root."""
    return ".".join(module.split(".")[:2])


def layer_of(module: str) -> int:
    return next(i for i, parts in enumerate(LAYERS) if part(module) in parts)


def test_every_part_of_the_package_has_a_layer() -> None:
    named = {p for parts in LAYERS for p in parts}
    unplaced = sorted({part(m) for m in modules() if m != "pql"} - named)
    assert not unplaced, f"give these a layer in LAYERS: {unplaced}"


def test_imports_go_down_the_layers() -> None:
    known = modules()
    wrong = []
    for name, path in known.items():
        if name == "pql":
            continue
        for target in imports(name, path, known):
            if part(target) != part(name) and layer_of(target) <= layer_of(name):
                wrong.append(f"{name} imports {target}")
    assert not wrong, "imports against the layer order (see LAYERS):\n" + "\n".join(sorted(wrong))


def test_no_import_circle() -> None:
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    # Tarjan's strongly connected components: any with two modules or more is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                circles.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    assert not circles, f"import circles: {circles}"


def test_modules_and_functions_stay_small() -> None:
    long_modules, long_functions = [], []
    for name, path in modules().items():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1  # the signature and docstring included
                if length > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name}: {length} lines")
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"
    root = sorted(p.name for p in PQL.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
    assert len(root) <= MAX_ROOT_MODULES, f"{len(root)} modules at the package root: {root}"


def test_public_definitions_have_docstrings() -> None:
    """Modules, classes, functions and methods whose names do not start with ``_`` (functions nested in
    functions are not public); ruff's D100-D104 and D106 keep them all, this counts them."""
    public, documented, missing = 0, 0, []

    def walk(node: ast.AST, where: str) -> None:
        nonlocal public, documented
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) \
                    and not child.name.startswith("_"):
                public += 1
                if ast.get_docstring(child):
                    documented += 1
                else:
                    missing.append(f"{where}.{child.name}")
                if isinstance(child, ast.ClassDef):
                    walk(child, f"{where}.{child.name}")

    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        public += 1
        documented += bool(ast.get_docstring(tree))
        walk(tree, name)
    assert documented / public >= 0.95, f"{documented} of {public} documented; missing: {missing}"
    assert public > 500  # the walk found the package


def test_the_spec_and_the_report_know_the_same_figure_kinds() -> None:
    from pql.ablate.spec import FIGURE_KINDS
    from pql.report.figures import FIGURES

    assert tuple(FIGURES) == FIGURE_KINDS
