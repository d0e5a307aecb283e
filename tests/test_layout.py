"""The code's layout: no import loop among the project's modules, dependencies point one way
(bench -> methods -> tasks), and no module of bench/ grows past one screenful of jobs."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("bench", "methods", "tasks")
MAX_BENCH_LINES = 330


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module under the project's packages."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules that `name` imports anywhere in its file (top level or inside a function)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package `level - 1` steps above this one
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            # `from bench import sweep` imports the module bench.sweep; `from bench.config import X` bench.config
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import bench.sweep.x` where only bench.sweep is a module
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import loops a depth-first walk meets, each as a path `a -> b -> ... -> a` (every loop
    shows up in at least one). A package's __init__ importing its own submodules is skipped: that
    is how a package exports, not a loop that needs a deferred import."""
    state: dict[str, str] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for target in sorted(graph[name]):
            if target.startswith(name + "."):  # a package importing its own submodule
                continue
            if state.get(target) == "open":
                cycles.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name)
    return cycles


def test_the_projects_modules_import_each_other_without_a_loop():
    cycles = find_cycles(import_graph())
    assert not cycles, "import loops: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


def test_dependencies_point_from_bench_to_methods_to_tasks():
    upward = sorted(f"{name} imports {target}" for name, targets in import_graph().items() for target in targets
                    if (name.split(".")[0], target.split(".")[0]) in {("methods", "bench"), ("tasks", "bench"), ("tasks", "methods")})
    assert not upward, "imports against bench -> methods -> tasks: " + "; ".join(upward)


def test_no_bench_module_is_over_its_line_budget():
    long = {str(path.relative_to(REPO)): n for path in sorted((REPO / "bench").rglob("*.py"))
            if (n := len(path.read_text().splitlines())) > MAX_BENCH_LINES}
    assert not long, f"bench/ modules over {MAX_BENCH_LINES} lines (split them by job): {long}"


def test_the_cycle_finder_reports_each_loop_and_its_path():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}}) == [["a", "b", "c", "a"], ["d", "e", "d"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []
