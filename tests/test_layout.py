"""The house rules a refactor must keep, each checked on the real tree and on a planted violation (so that a check
which can no longer fail shows up as a failing test too):

- kernels/ imports only ``engine.errors``, ``engine.axes`` and other kernels;
- engine's ground floor (``engine/*.py``) imports no room above it, and ``engine.stores`` and ``engine.runtime``
  import no ``engine.pipelines`` module;
- no model family (``engine/models/<family>/``) imports another family: what they share is in ``engine.models.common``;
  and ``engine.models`` imports no ``engine.runtime`` module;
- no import cycle across engine/ and kernels/, function-level imports included;
- no module is imported by a string (``importlib.import_module``, ``__import__``) outside the package face
  (``engine/__init__.py``, which loads its names on first use): such an import hides its arrow from the cycle check
  and from a reader;
- a project import inside a function or class body carries a ``# lazy: <reason>`` comment on its line or the line
  above, and there are at most ``MAX_LAZY`` of them;
- the floors run one way between rooms: stores never import runtime or models, models never import runtime or
  stores, runtime never imports models (``ROOM_RULES``, function-level imports included);
- no module of engine/, kernels/ or jobs/ is over ``MAX_LINES`` lines;
- engine/ and kernels/ never read flags;
- ``import engine`` gives the public face a notebook needs.
"""

import ast
import dataclasses
import importlib
import pathlib
import re
import textwrap

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PROJECT = ("engine", "kernels")
MAX_LAZY = 10  # function-level project imports allowed in engine/ and kernels/ together
KERNEL_MAY_IMPORT = ("engine.errors", "engine.axes", "kernels")
ABOVE_GROUND = ("engine.models", "engine.pipelines", "engine.runtime", "engine.stores", "engine.data", "engine.text")
MODELS = "engine.models"
SHARED_BY_FAMILIES = "common"  # engine/models/common/: the one package every family may import
# room -> the rooms it must never import: models and stores sit on one floor and neither imports the other; runtime
# sits above both and takes what it needs of a model from the pipeline that calls it.
ROOM_RULES = {
    "engine.stores": ("engine.runtime", "engine.models"),
    "engine.models": ("engine.runtime", "engine.stores"),
    "engine.runtime": ("engine.models",),
}
MAX_LINES = 450  # one concept a module: past this it is two modules (STYLE.md habit 8)
SIZED = ("engine", "kernels", "jobs")
LAZY_COMMENT = re.compile(r"#\s*lazy:\s*\S")
FACE = (
    "load_model",
    "open_store",
    "open_similarity",
    "run_encode",
    "run_similarity",
    "run_retrieval",
    "run_align",
    "run_decode",
    "run_interp",
    "run_challenge",
    "run_probe",
    "run_finetune",
    "run_compare",
    "run_probes",
    "run_verify",
)


@dataclasses.dataclass(frozen=True)
class Import:
    """One project module imported by ``source`` (a path relative to the scanned root) at ``line``."""

    module: str
    source: str
    line: int
    lazy: bool  # inside a def or class body
    commented: bool  # a `# lazy: <reason>` comment on the line or the line above

    def where(self) -> str:
        return f"{self.source}:{self.line} imports {self.module}"


def _module_name(path: pathlib.Path, root: pathlib.Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def scan(root: pathlib.Path = REPO) -> dict[str, list[Import]]:
    """Module of engine/ or kernels/ under ``root`` -> the project modules it imports, anywhere in its body."""
    paths = {_module_name(p, root): p for package in PROJECT for p in sorted((root / package).rglob("*.py"))}
    found = {}
    for name, path in paths.items():
        text = path.read_text()
        lines = text.splitlines()
        source = str(path.relative_to(root))
        found[name] = []

        package = name if path.name == "__init__.py" else name.rpartition(".")[0]

        def visit(node, lazy, name=name, lines=lines, source=source, package=package):
            for child in ast.iter_child_nodes(node):
                targets = []
                if isinstance(child, ast.ImportFrom):
                    # `from . import x` in engine/data/audio.py imports from engine.data, `from .. import x` from engine
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1])
                    module = ".".join(filter(None, [base if child.level else "", child.module or ""]))
                    # `from engine.data import audio` imports the module engine.data.audio, not a name of engine.data
                    targets = [f"{module}.{a.name}" for a in child.names]
                    targets = [t if t in paths else module for t in targets]
                elif isinstance(child, ast.Import):
                    targets = [a.name for a in child.names]
                for target in dict.fromkeys(targets):
                    if target.split(".")[0] in PROJECT and target != name:
                        said = any(LAZY_COMMENT.search(ln) for ln in lines[max(child.lineno - 2, 0) : child.lineno])
                        found[name].append(Import(target, source, child.lineno, lazy, said))
                inside = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
                visit(child, lazy or inside)

        visit(ast.parse(text), False)
    return found


def _ancestors(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph(found: dict[str, list[Import]]) -> dict[str, set[str]]:
    """module -> the modules importing it runs. Importing ``engine.axes`` first runs ``engine/__init__.py``, so the
    packages above an imported module count too, except the importer's own (Python has started those already)."""
    graph = {}
    for name, imports in found.items():
        own = set(_ancestors(name))
        deps = {m for imp in imports for m in [*_ancestors(imp.module), imp.module]}
        graph[name] = {d for d in deps if d in found and d != name and d not in own}
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


def _within(module: str, prefixes) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def kernel_violations(found: dict[str, list[Import]]) -> list[str]:
    return [
        imp.where()
        for name, imports in found.items()
        if _within(name, ["kernels"])
        for imp in imports
        if not _within(imp.module, KERNEL_MAY_IMPORT)
    ]


def floor_violations(found: dict[str, list[Import]]) -> list[str]:
    """Imports that reach upwards: from the ground floor (engine/*.py but the package face) into any room, and from
    the formats and run coordination into the pipelines."""
    bad = []
    for name, imports in found.items():
        for imp in imports:
            path = pathlib.PurePath(imp.source)
            if path.parent == pathlib.PurePath("engine") and path.name != "__init__.py":
                above = ABOVE_GROUND
            elif _within(name, ["engine.stores", "engine.runtime"]):
                above = ("engine.pipelines",)
            else:
                continue
            if _within(imp.module, above):
                bad.append(imp.where())
    return bad


def families(found: dict[str, list[Import]]) -> set[str]:
    """The model families: the packages under engine/models/ that hold modules, but the shared one."""
    parts = [name.split(".") for name in found]
    return {p[2] for p in parts if len(p) > 3 and ".".join(p[:2]) == MODELS} - {SHARED_BY_FAMILIES}


def family_violations(found: dict[str, list[Import]]) -> list[str]:
    """Imports from one model family of another (function-level ones included)."""
    known = families(found)

    def family(module: str) -> str | None:
        parts = module.split(".")
        return parts[2] if len(parts) > 2 and ".".join(parts[:2]) == MODELS and parts[2] in known else None

    return [
        imp.where()
        for name, imports in found.items()
        if family(name)
        for imp in imports
        if family(imp.module) not in (None, family(name))
    ]


def room_violations(found: dict[str, list[Import]], rules=ROOM_RULES) -> list[str]:
    """Imports from a room into a room it must never import (``rules``: room -> forbidden rooms)."""
    return [
        imp.where()
        for name, imports in found.items()
        for room, forbidden in rules.items()
        if _within(name, [room])
        for imp in imports
        if _within(imp.module, forbidden)
    ]


def long_modules(root: pathlib.Path = REPO, limit: int = MAX_LINES) -> list[str]:
    """The modules of ``SIZED`` under ``root`` with more than ``limit`` lines."""
    paths = sorted(p for package in SIZED for p in (root / package).rglob("*.py"))
    sizes = {str(p.relative_to(root)): len(p.read_text().splitlines()) for p in paths}
    return [f"{path}: {n} lines" for path, n in sizes.items() if n > limit]


def lazy_imports(found: dict[str, list[Import]]) -> list[Import]:
    return [imp for imports in found.values() for imp in imports if imp.lazy]


def lazy_violations(found: dict[str, list[Import]], limit: int = MAX_LAZY) -> list[str]:
    lazy = lazy_imports(found)
    bad = [f"{imp.where()} inside a function with no `# lazy: <reason>` comment" for imp in lazy if not imp.commented]
    if len(lazy) > limit:
        bad.append(f"{len(lazy)} function-level project imports, at most {limit}")
    return bad


def plant(root: pathlib.Path, files: dict[str, str]) -> pathlib.Path:
    """A tiny engine/ and kernels/ tree under ``root``, from ``{relative path: source}``."""
    for rel, text in {"engine/__init__.py": "", "kernels/__init__.py": "", **files}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root


@pytest.fixture(scope="module")
def found():
    found = scan()
    assert len(found) > 50, "the scan found too few modules to mean anything"
    return found


def test_scan_reads_top_level_and_function_level_imports(tmp_path):
    root = plant(
        tmp_path,
        {
            "engine/errors.py": "",
            "engine/data/__init__.py": "",
            "engine/data/audio.py": "import numpy\n",
            "engine/stores/__init__.py": "",
            "engine/stores/kv.py": """
                from engine.data import audio
                import engine.errors as errors
                from ..data.audio import y
                from . import schema

                def f():
                    # lazy: the reason
                    from engine.data.audio import x
                """,
            "engine/stores/schema.py": "",
        },
    )
    assert scan(root)["engine.stores.kv"] == [
        Import("engine.data.audio", "engine/stores/kv.py", 2, lazy=False, commented=False),
        Import("engine.errors", "engine/stores/kv.py", 3, lazy=False, commented=False),
        Import("engine.data.audio", "engine/stores/kv.py", 4, lazy=False, commented=False),
        Import("engine.stores.schema", "engine/stores/kv.py", 5, lazy=False, commented=False),
        Import("engine.data.audio", "engine/stores/kv.py", 9, lazy=True, commented=True),
    ]
    assert scan(root)["engine.data.audio"] == []


def test_kernels_import_only_errors_axes_and_kernels(found):
    bad = kernel_violations(found)
    assert not bad, "kernels/ may import only engine.errors, engine.axes and other kernels:\n" + "\n".join(bad)


def test_kernel_rule_catches_a_planted_import(tmp_path):
    root = plant(
        tmp_path,
        {
            "engine/axes.py": "",
            "engine/errors.py": "",
            "engine/stores/__init__.py": "",
            "engine/stores/kv.py": "",
            "kernels/a.py": "from engine import axes\nfrom engine.errors import E\nfrom kernels import b\n",
            "kernels/b.py": "def f():\n    import engine.stores.kv\n",
        },
    )
    assert kernel_violations(scan(root)) == ["kernels/b.py:2 imports engine.stores.kv"]


def test_nothing_imports_upwards(found):
    bad = floor_violations(found)
    why = "imports reaching a room above (move the code down, or the import up to the caller):"
    assert not bad, "\n".join([why, *bad])


def test_floor_rule_catches_planted_imports(tmp_path):
    root = plant(
        tmp_path,
        {
            "engine/__init__.py": "from engine.pipelines import run\n",  # the face may import every room
            "engine/errors.py": "",
            "engine/languages.py": "from engine import errors\n\ndef f():\n    from engine.text import phones\n",
            "engine/text/__init__.py": "from engine.text import phones\n",  # a room's own face is no ground floor
            "engine/text/phones.py": "",
            "engine/pipelines/__init__.py": "",
            "engine/pipelines/run.py": "from engine.stores import kv\n",
            "engine/stores/__init__.py": "",
            "engine/stores/kv.py": "from engine.text import phones\nfrom engine.pipelines import run\n",
            "engine/runtime/__init__.py": "",
            "engine/runtime/plan.py": "import engine.pipelines\n",
        },
    )
    assert floor_violations(scan(root)) == [
        "engine/languages.py:4 imports engine.text.phones",
        "engine/runtime/plan.py:1 imports engine.pipelines",
        "engine/stores/kv.py:2 imports engine.pipelines.run",
    ]


def test_no_model_family_imports_another(found):
    assert {"whisper", "wav2vec2", "w2vbert", "owsm"} <= families(found)
    bad = family_violations(found)
    why = "a model family imports another (move what they share to engine/models/common/, or it into the family):"
    assert not bad, "\n".join([why, *bad])


def test_family_rule_catches_planted_imports(tmp_path):
    root = plant(
        tmp_path,
        {
            "engine/models/__init__.py": "",
            "engine/models/family.py": "from engine.models.whisper import encoder\n",  # the registry is no family
            "engine/models/common/__init__.py": "",
            "engine/models/common/layers.py": "",
            "engine/models/whisper/__init__.py": "",
            "engine/models/whisper/encoder.py": "from engine.models import family\nfrom . import m\n",
            "engine/models/whisper/m.py": "from engine.models.common.layers import Linear\n",
            "engine/models/w2vbert/__init__.py": "",
            "engine/models/w2vbert/model.py": "",
            "engine/models/owsm/__init__.py": "",
            "engine/models/owsm/model.py": "from engine.models.w2vbert.model import _param\n",
            "engine/models/owsm/decoder.py": "def f():\n    # lazy: planted\n    import engine.models.whisper\n",
        },
    )
    assert families(scan(root)) == {"whisper", "w2vbert", "owsm"}
    assert family_violations(scan(root)) == [
        "engine/models/owsm/decoder.py:3 imports engine.models.whisper",
        "engine/models/owsm/model.py:1 imports engine.models.w2vbert.model",
    ]


def test_rooms_import_one_way(found):
    bad = room_violations(found)
    why = (
        "stores import no runtime or models, models no runtime or stores, runtime no models (move the code to the "
        "room that owns it, or the shared part down to the ground floor or data):"
    )
    assert not bad, "\n".join([why, *bad])


def test_room_rule_catches_planted_imports(tmp_path):
    root = plant(
        tmp_path,
        {
            "engine/faults.py": "",
            "engine/data/__init__.py": "",
            "engine/data/audio.py": "",
            "engine/stores/__init__.py": "",
            "engine/stores/kv.py": "from engine import faults\nfrom engine.data import audio\n",
            "engine/stores/words.py": "def f():\n    from engine.runtime import parts\n",
            "engine/stores/schema.py": "from engine.models.whisper import dims\n",
            "engine/models/__init__.py": "",
            "engine/models/whisper/__init__.py": "",
            "engine/models/whisper/dims.py": "from engine.data import audio\n",
            "engine/models/whisper/encoder.py": "import engine.stores.schema\nfrom engine.runtime import parallel\n",
            "engine/runtime/__init__.py": "",
            "engine/runtime/parts.py": "from engine.stores import kv\n",  # runtime may import stores
            "engine/runtime/parallel.py": "",
            "engine/runtime/plan.py": "from engine.models.whisper.dims import ModelDimensions\n",
        },
    )
    assert room_violations(scan(root)) == [
        "engine/models/whisper/encoder.py:1 imports engine.stores.schema",
        "engine/models/whisper/encoder.py:2 imports engine.runtime.parallel",
        "engine/runtime/plan.py:1 imports engine.models.whisper.dims",
        "engine/stores/schema.py:1 imports engine.models.whisper.dims",
        "engine/stores/words.py:2 imports engine.runtime.parts",
    ]


def test_no_module_is_over_the_line_limit():
    bad = long_modules()
    assert not bad, f"modules over {MAX_LINES} lines (split each into modules of one concept):\n" + "\n".join(bad)


def test_line_limit_catches_a_planted_long_module(tmp_path):
    root = plant(tmp_path, {"engine/short.py": "x = 1\n" * 3, "jobs/long.py": "x = 1\n" * 4, "bench/b.py": "x\n" * 9})
    assert long_modules(root, limit=3) == ["jobs/long.py: 4 lines"]


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a -> b -> c -> a"]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_import_graph_closes_planted_cycles(tmp_path):
    root = plant(
        tmp_path,
        {
            # a function-level import closes a cycle as well as a top-level one
            "engine/models.py": "from engine import data\n",
            "engine/data.py": "def f():\n    from engine.models import x\n",
            # an eager package face runs when kernels import engine.axes, and comes back to the kernel
            "engine/__init__.py": "from engine.sim import run\n",
            "engine/axes.py": "",
            "engine/sim.py": "from kernels.seqsim import seqsim\n",
            "kernels/seqsim.py": "from engine import axes\n",
        },
    )
    assert find_cycles(import_graph(scan(root))) == [
        "engine -> engine.sim -> kernels.seqsim -> engine",
        "engine.data -> engine.models -> engine.data",
    ]


def test_no_import_cycle_in_engine_and_kernels(found):
    cycles = find_cycles(import_graph(found))
    assert not cycles, "import cycles across engine/ and kernels/:\n" + "\n".join(cycles)


def test_function_level_imports_are_few_and_say_why(found):
    bad = lazy_violations(found)
    assert not bad, (
        "move these imports to the top of their module, or say on the line above why they must wait "
        "(`# lazy: <reason>`, e.g. an optional heavy dependency):\n" + "\n".join(bad)
    )


def test_lazy_rule_catches_planted_imports(tmp_path):
    lazy = "def f():\n    # lazy: matplotlib is optional\n    from engine import errors\n"
    files = {"engine/errors.py": "", "engine/a.py": lazy, "engine/b.py": "class C:\n    import engine.errors\n"}
    assert lazy_violations(scan(plant(tmp_path, files))) == [
        "engine/b.py:2 imports engine.errors inside a function with no `# lazy: <reason>` comment"
    ]
    files["engine/b.py"] = "import engine.errors  # lazy: a comment does not make a top-level import lazy\n"
    assert lazy_violations(scan(plant(tmp_path, files)), limit=1) == []
    assert lazy_violations(scan(plant(tmp_path, files)), limit=0) == ["1 function-level project imports, at most 0"]


def string_imports(root: pathlib.Path = REPO) -> list[str]:
    """``path:line`` of every call that imports a module by a string in engine/ and kernels/ under ``root``, but in
    the package face: ``import_module(...)`` however reached (``importlib.import_module``, a bare name imported from
    importlib) and ``__import__(...)``."""
    bad = []
    for package in PROJECT:
        for path in sorted((root / package).rglob("*.py")):
            source = path.relative_to(root)
            if source == pathlib.Path("engine/__init__.py"):
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    if name in ("import_module", "__import__"):
                        bad.append(f"{source}:{node.lineno}")
    return bad


def test_no_module_is_imported_by_a_string():
    bad = string_imports()
    why = "import these modules by name at the top (the cycle check and a reader see only real imports):"
    assert not bad, "\n".join([why, *bad])


def test_string_import_rule_catches_planted_calls(tmp_path):
    root = plant(
        tmp_path,
        {
            "engine/__init__.py": "import importlib\nimportlib.import_module('engine.a')\n",  # the face may
            "engine/a.py": "import importlib\n\ndef f():\n    return importlib.import_module('engine.b')\n",
            "engine/b.py": "from importlib import import_module\nx = import_module('engine.a')\n",
            "kernels/k.py": "m = __import__('engine.a')\n",
            "engine/c.py": "import importlib.metadata\nv = importlib.metadata.version('babelgrid')\n",
        },
    )
    assert string_imports(root) == ["engine/a.py:4", "engine/b.py:2", "kernels/k.py:1"]


def _imported_packages(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return found | {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


@pytest.mark.parametrize("package", PROJECT)
def test_library_code_reads_no_flags(package):
    offenders = [str(p.relative_to(REPO)) for p in (REPO / package).rglob("*.py") if "absl" in _imported_packages(p)]
    assert not offenders, f"flags belong in jobs/ only: {offenders} import absl"


def test_engine_gives_its_public_face():
    engine = importlib.import_module("engine")
    missing = [name for name in FACE if not hasattr(engine, name)]
    assert not missing, f"engine/__init__.py should give {missing} (the entry points a notebook needs)"
