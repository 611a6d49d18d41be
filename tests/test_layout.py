"""The house rules a refactor must keep: engine/'s rooms import, no module imports itself back through others, and
engine/ and kernels/ never read flags."""

import ast
import importlib
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _engine_imports() -> dict[str, set[str]]:
    """engine module -> the engine modules it imports, at the top or inside functions (both can close a cycle)."""
    modules = {_module_name(p): p for p in (REPO / "engine").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "engine":
                for alias in node.names:  # `from engine.data import audio` imports the module engine.data.audio
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in modules else node.module)
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.split(".")[0] == "engine"}
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Every cycle a depth-first walk closes, as ``a -> b -> a``."""
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d) :] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def _imported_packages(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return found | {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


def test_engine_rooms_import():
    rooms = ("engine.models.whisper", "engine.data", "engine.stores", "engine.runtime", "engine.pipelines")
    rooms += ("engine.text",)
    for room in rooms:
        importlib.import_module(room)


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_engine():
    graph = _engine_imports()
    assert len(graph) > 30, "the walk found too few modules to mean anything"
    cycles = find_cycles(graph)
    assert not cycles, "import cycles inside engine/:\n" + "\n".join(cycles)


@pytest.mark.parametrize("package", ["engine", "kernels"])
def test_library_code_reads_no_flags(package):
    offenders = [str(p.relative_to(REPO)) for p in (REPO / package).rglob("*.py") if "absl" in _imported_packages(p)]
    assert not offenders, f"flags belong in jobs/ only: {offenders} import absl"
