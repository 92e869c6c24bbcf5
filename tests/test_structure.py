"""The layout rules of docs/contributing.md, read from the source with ``ast`` (nothing is imported or run): no source
module over 420 lines, no function over 60, no import cycle between the top-level packages, and no path into the
checkout's ``scripts/`` inside the library (an installed package has no ``scripts/`` beside it).

Each check lists every violation (``file:function:first-last (n lines)``), so that a failure says what to cut.
"""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("sage_toolkit", "data_prep", "fairseq_plugins")  # the importable top-level packages
SOURCE = (*LIBRARY, "scripts")  # what the size rules cover (tests/ is exempt)
MAX_MODULE_LINES = 420
MAX_FUNCTION_LINES = 60

# What the size rules do not count, each with its reason: (file, the function or the module-level name assigned).
# Their lines are left out of the module's count as well.
EXEMPT = {
    ("fairseq_plugins/optim/_fused_triton.py", "_sage_kernel"): "the Triton kernel's body: one chunk of the whole "
    "fused step (loads, the update in registers, stores) for every path and dtype its constexprs select",
    ("fairseq_plugins/optim/_fused_cpu.py", "_SOURCE"): "the fused CPU kernel's C++ source, compiled on first use: "
    "C++ in a string, not Python",
}


def source_files(folders=SOURCE) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@functools.cache
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def definitions(tree: ast.Module):
    """(name, node) of every function, class and assignment to a plain name, at any depth."""
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield node.name, node
        elif isinstance(node, ast.Assign):
            yield from ((t.id, node) for t in node.targets if isinstance(t, ast.Name))


def exempt_spans(file: str, tree: ast.Module) -> list[tuple[int, int]]:
    """The (first, last) lines of the exempt definitions of ``file`` (its path from the root)."""
    return [(node.lineno, node.end_lineno) for name, node in definitions(tree) if (file, name) in EXEMPT]


def long_functions(file: str, tree: ast.Module) -> list[str]:
    """``file:qualified.name:first-last (n lines)`` for every function over the limit, methods and nested ones too."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = prefix + child.name
                lines = child.end_lineno - child.lineno + 1
                is_function = not isinstance(child, ast.ClassDef)
                if is_function and lines > MAX_FUNCTION_LINES and (file, child.name) not in EXEMPT:
                    found.append(f"{file}:{name}:{child.lineno}-{child.end_lineno} ({lines} lines)")
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def long_module(file: str, tree: ast.Module, total_lines: int) -> list[str]:
    """``file: n lines`` where the module's lines, less those of its exempt definitions, are over the limit."""
    lines = total_lines - sum(last - first + 1 for first, last in exempt_spans(file, tree))
    return [f"{file}: {lines} lines"] if lines > MAX_MODULE_LINES else []


def long_functions_in(folders) -> list[str]:
    return [v for path in source_files(folders) for v in long_functions(relative(path), parse(path))]


def long_modules_in(folders) -> list[str]:
    return [
        v
        for path in source_files(folders)
        for v in long_module(relative(path), parse(path), len(path.read_text(encoding="utf-8").splitlines()))
    ]


def test_the_exemptions_name_what_exists():
    """An exemption whose definition was renamed or removed would exempt nothing, silently."""
    for (file, name), reason in EXEMPT.items():
        path = ROOT / file
        assert path.is_file(), f"EXEMPT names {file}, which does not exist"
        names = {defined for defined, _ in definitions(parse(path))}
        assert name in names, f"EXEMPT names {file}:{name}, which is not defined there"
        assert reason


def test_the_checks_find_what_they_look_for():
    """The readers themselves: a long function, a nested one, a long module, a cycle and a scripts path are found,
    and an exempt definition is not counted."""

    def body(indent: int) -> str:
        return "\n".join(f"{' ' * indent}x{i} = {i}" for i in range(MAX_FUNCTION_LINES))

    source = f"def long():\n{body(4)}\n\nclass C:\n    def method(self):\n        def inner():\n{body(12)}\n"
    tree = ast.parse(source)
    assert [v.split(":")[1] for v in long_functions("x.py", tree)] == ["long", "C.method", "C.method.inner"]
    kernel = ast.parse(source.replace("def long", "def _sage_kernel"))
    assert "_sage_kernel" not in " ".join(long_functions("fairseq_plugins/optim/_fused_triton.py", kernel))
    assert long_module("x.py", tree, MAX_MODULE_LINES + 1) == [f"x.py: {MAX_MODULE_LINES + 1} lines"]
    assert not long_module("x.py", tree, MAX_MODULE_LINES)
    assert not long_module("fairseq_plugins/optim/_fused_triton.py", kernel, MAX_MODULE_LINES + 20)
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
    code = 'ROOT / "scripts" / "x.py"\nPath(ROOT, "scripts")\nX = "scripts/evaluate.py"\nprint("run scripts/x.py")\n'
    assert [line for line, _ in scripts_paths(ast.parse(code))] == [1, 2, 3]


SIZE_CHECKS = {"functions over 60 lines (cut them into named steps)": long_functions_in,
               "modules over 420 lines (split them by job)": long_modules_in}  # fmt: skip


@pytest.mark.parametrize("what", SIZE_CHECKS)
def test_sizes(what):
    found = SIZE_CHECKS[what](SOURCE)
    assert not found, f"{what}:\n" + "\n".join(found)


# ---------------------------------------------------------------- imports between the packages


def imported_packages(tree: ast.Module) -> set[str]:
    """The top-level packages of LIBRARY that a module imports, at its top or inside a function (a lazy import is an
    import too). Relative imports stay inside the package."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & set(LIBRARY)


def package_graph() -> dict[str, dict[str, list[str]]]:
    """{package: {imported package: the files that import it}}."""
    graph: dict[str, dict[str, list[str]]] = {package: {} for package in LIBRARY}
    for path in source_files(LIBRARY):
        package = relative(path).split("/")[0]
        for other in imported_packages(parse(path)) - {package}:
            graph[package].setdefault(other, []).append(relative(path))
    return graph


def import_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Every elementary cycle of a small directed graph, each once, starting at its smallest node."""
    cycles = []

    def walk(start: str, node: str, path: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt == start:
                cycles.append(list(path))
            elif nxt > start and nxt not in path:
                walk(start, nxt, [*path, nxt])

    for start in sorted(edges):
        walk(start, start, [start])
    return cycles


def test_no_import_cycle_between_the_packages():
    graph = package_graph()
    cycles = import_cycles({package: set(imports) for package, imports in graph.items()})
    described = [
        " -> ".join([*cycle, cycle[0]])
        + " ("
        + "; ".join(f"{a} -> {b}: {', '.join(graph[a][b])}" for a, b in zip(cycle, [*cycle[1:], cycle[0]], strict=True))
        + ")"
        for cycle in cycles
    ]
    assert not described, "import cycles between the top-level packages:\n" + "\n".join(described)


def test_the_optimizer_package_imports_neither_the_toolkit_nor_data_prep():
    """fairseq_plugins is what a user's training loads: it stands alone."""
    assert not package_graph()["fairseq_plugins"]


# ---------------------------------------------------------------- no path into the checkout's scripts/

SCRIPT_PATH = re.compile(r"(\./)?scripts/[\w./-]+")  # a whole string that is a relative path into scripts/


def scripts_paths(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, what) for each path into ``scripts/`` that code builds: ``"scripts"`` joined into a path (``/``,
    ``Path(...)``, ``os.path.join``, ``joinpath``) or a string constant that is such a path as a whole. Text that
    names a script (a docstring, a message) is not a path."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            parts = [node.left, node.right]
        elif isinstance(node, ast.Call):
            parts = list(node.args)
        else:
            parts = []
        for part in parts:
            if isinstance(part, ast.Constant) and part.value == "scripts":
                found.append((node.lineno, ast.unparse(node)))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and SCRIPT_PATH.fullmatch(node.value):
            found.append((node.lineno, repr(node.value)))
    return sorted(set(found))


def test_the_library_names_no_path_into_scripts():
    found = [f"{relative(p)}:{line}: {what}" for p in source_files(LIBRARY) for line, what in scripts_paths(parse(p))]
    assert not found, "paths into the checkout's scripts/ (run `python -m <module>` instead):\n" + "\n".join(found)
