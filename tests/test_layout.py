"""The house rules a refactor must keep, each checked on the real tree and on a planted violation (so that a check
which can no longer fail shows up as a failing test too):

- kernels/ imports only ``engine.errors``, ``engine.axes`` and other kernels;
- engine's ground floor (``engine/*.py``) imports no room above it, and ``engine.stores`` and ``engine.runtime``
  import no ``engine.pipelines`` module;
- no model family (``engine/models/<family>/``) imports another family: what they share is in ``engine.models.common``;
- outside the families' folders and the registry (``engine/models/family.py``, ``interface.py``), no module of engine/
  or jobs/ is tied to a family: imports from its folder, names its loader (a top-level ``load_*`` of its folder) or
  compares anything with its name (``FAMILY_NAMES``); the pipelines ask the interface and the registry instead;
- what the interface's protocols declare is read, never probed (``hasattr``, ``getattr`` with a default) where the
  models are used (that every family's objects declare the whole of each protocol is
  tests/models/test_interface_conformance.py's);
- no import cycle across engine/ and kernels/, function-level imports included;
- no module of engine/, kernels/ or jobs/ is imported by a string (``importlib.import_module``, ``__import__``,
  ``runpy.run_module``) but in ``STRING_IMPORTERS`` (the package face, which loads its names on first use, and the
  command line, which runs a job by its name): such an import hides its arrow from the cycle check and from a reader;
- a project import inside a function or class body carries a ``# lazy: <reason>`` comment on its line or the line
  above, and there are at most ``MAX_LAZY`` of them;
- the floors run one way between rooms: stores never import runtime or models, models never import runtime, stores or
  pipelines, runtime never imports models, data and text import none of models, pipelines, runtime and stores
  (``ROOM_RULES``, function-level imports included);
- a job room (``engine/pipelines/<job>/``) imports ``engine/pipelines/stages/`` and the floors below, never another job
  room, and the stages import no job room: what two jobs share is a stage, written once (function-level imports
  included);
- no module of engine/, kernels/, jobs/ or bench/ is over ``MAX_LINES`` lines;
- engine/ and kernels/ never read flags;
- ``import engine`` gives the public face a notebook needs: every job's ``run_*`` and its config among it.
"""

import ast
import dataclasses
import functools
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
# The floors above the ground floor's, from the bottom: data and text (audio, corpora, words; they import the ground
# floor and their own room only), models and stores, runtime, pipelines.
UPPER_FLOORS = ("engine.models", "engine.pipelines", "engine.runtime", "engine.stores")
# room -> the rooms it must never import: models and stores sit on one floor and neither imports the other; runtime
# sits above both and takes what it needs of a model from the pipeline that calls it; the models serve the pipelines
# and never call back into one; data and text sit below them all.
ROOM_RULES = {
    "engine.stores": ("engine.runtime", "engine.models"),
    "engine.models": ("engine.runtime", "engine.stores", "engine.pipelines"),
    "engine.runtime": ("engine.models",),
    "engine.data": UPPER_FLOORS,
    "engine.text": UPPER_FLOORS,
}
PIPELINES = "engine.pipelines"
STAGES = "engine.pipelines.stages"  # the floor below the job rooms: what two or more jobs use, each once
MAX_LINES = 450  # one concept a module: past this it is two modules (STYLE.md habit 8)
SIZED = ("engine", "kernels", "jobs", "bench")
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
    "run_neurons",
    "run_heads",
    "EncodeConfig",
    "SimilarityConfig",
    "RetrievalConfig",
    "AlignConfig",
    "DecodeConfig",
    "InterpConfig",
    "ChallengeConfig",
    "ProbeConfig",
    "FinetuneConfig",
    "CompareConfig",
    "ProbesConfig",
    "VerifyConfig",
    "NeuronsConfig",
    "HeadsConfig",
)


# Every rule walks the same few hundred modules: each of the tree's files is read and parsed once per test process
# (3.5 s for a whole pass), not once per rule. A planted tree (under tmp_path) is parsed afresh each time.
@functools.cache
def _repo_source(path: pathlib.Path) -> tuple[str, ast.Module]:
    text = path.read_text()
    return text, ast.parse(text)


def source_of(path: pathlib.Path) -> tuple[str, ast.Module]:
    """``path``'s text and syntax tree; the tree is shared, read it only."""
    if REPO in path.parents:
        return _repo_source(path)
    text = path.read_text()
    return text, ast.parse(text)


def parse(path: pathlib.Path) -> ast.Module:
    return source_of(path)[1]


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


def scan(root: pathlib.Path = REPO, packages: tuple[str, ...] = PROJECT) -> dict[str, list[Import]]:
    """Module of ``packages`` (engine/ and kernels/) under ``root`` -> the project modules it imports, anywhere in its
    body."""
    paths = {_module_name(p, root): p for package in packages for p in sorted((root / package).rglob("*.py"))}
    found = {}
    for name, path in paths.items():
        text, tree = source_of(path)
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
                    if target.split(".")[0] in packages and target != name:
                        said = any(LAZY_COMMENT.search(ln) for ln in lines[max(child.lineno - 2, 0) : child.lineno])
                        found[name].append(Import(target, source, child.lineno, lazy, said))
                inside = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda))
                visit(child, lazy or inside)

        visit(tree, False)
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


def job_room(module: str) -> str | None:
    """The job room (``engine.pipelines.<job>``) a module belongs to; None outside the job rooms (the stages and the
    pipelines package itself included)."""
    parts = module.split(".")
    room = ".".join(parts[:3])
    return room if len(parts) > 2 and ".".join(parts[:2]) == PIPELINES and room != STAGES else None


def job_room_violations(found: dict[str, list[Import]]) -> list[str]:
    """Imports from a job room into another job room, and from the stages into any job room."""
    return [
        imp.where()
        for name, imports in found.items()
        if job_room(name) or _within(name, [STAGES])
        for imp in imports
        if job_room(imp.module) not in (None, job_room(name))
    ]


def long_modules(root: pathlib.Path = REPO, limit: int = MAX_LINES) -> list[str]:
    """The modules of ``SIZED`` under ``root`` with more than ``limit`` lines."""
    paths = sorted(p for package in SIZED for p in (root / package).rglob("*.py"))
    sizes = {str(p.relative_to(root)): len(source_of(p)[0].splitlines()) for p in paths}
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


def test_job_rooms_import_the_stages_and_never_each_other(found):
    bad = job_room_violations(found)
    why = (
        "a job room imports engine/pipelines/stages/ and the floors below, never another job room, and the stages "
        "import no job room (move what two jobs share into a module of stages/, named by its concept):"
    )
    assert not bad, "\n".join([why, *bad])
    assert any(_within(imp.module, [STAGES]) for name in found if job_room(name) for imp in found[name])


def test_job_room_rule_catches_planted_imports(tmp_path):
    root = plant(
        tmp_path,
        {
            "engine/runtime/__init__.py": "",
            "engine/runtime/runs.py": "",
            "engine/pipelines/__init__.py": "",
            "engine/pipelines/stages/__init__.py": "",
            "engine/pipelines/stages/windows.py": "from engine.runtime import runs\n",  # a floor below
            "engine/pipelines/stages/lid.py": (
                "from engine.pipelines.stages import windows\nimport engine.pipelines.probes.config\n"
            ),
            "engine/pipelines/probes/__init__.py": "",
            "engine/pipelines/probes/config.py": "",
            "engine/pipelines/probes/run.py": (  # its own room and the stages
                "from engine.pipelines.probes import config\nfrom engine.pipelines.stages import lid\n"
            ),
            "engine/pipelines/neurons/__init__.py": "",
            "engine/pipelines/neurons/run.py": (
                "from engine.pipelines.probes.config import FOLDS\nfrom engine.runtime import runs\n"
            ),
            "engine/pipelines/heads/__init__.py": "",
            "engine/pipelines/heads/plan.py": (
                "def f():\n    # lazy: planted\n    from engine.pipelines.neurons import run\n"
            ),
        },
    )
    assert job_room_violations(scan(root)) == [
        "engine/pipelines/heads/plan.py:3 imports engine.pipelines.neurons.run",
        "engine/pipelines/neurons/run.py:1 imports engine.pipelines.probes.config",
        "engine/pipelines/stages/lid.py:2 imports engine.pipelines.probes.config",
    ]


def test_room_rule_catches_planted_imports_into_the_pipelines_and_above_data_and_text(tmp_path):
    root = plant(
        tmp_path,
        {
            "engine/languages.py": "",
            "engine/data/__init__.py": "",
            "engine/data/audio.py": "from engine import languages\nfrom engine.data import tables\n",  # ground, own
            "engine/data/tables.py": "def f():\n    # lazy: planted\n    from engine.stores import kv\n",
            "engine/data/sources.py": "from engine.models.whisper import dims\n",
            "engine/text/__init__.py": "",
            "engine/text/phones.py": "from engine.text import words\nimport engine.runtime.parts\n",
            "engine/text/words.py": "from engine.pipelines.decode import run\n",
            "engine/stores/__init__.py": "",
            "engine/stores/kv.py": "",
            "engine/runtime/__init__.py": "",
            "engine/runtime/parts.py": "",
            "engine/pipelines/__init__.py": "",
            "engine/pipelines/decode/__init__.py": "",
            "engine/pipelines/decode/run.py": "from engine.models.whisper import dims\nfrom engine.text import words\n",
            "engine/models/__init__.py": "",
            "engine/models/whisper/__init__.py": "",
            "engine/models/whisper/dims.py": "from engine.data import audio\nfrom engine.text import phones\n",
            "engine/models/whisper/decoding.py": "def f():\n    from engine.pipelines.decode import run\n",
        },
    )
    assert room_violations(scan(root)) == [
        "engine/data/sources.py:1 imports engine.models.whisper.dims",
        "engine/data/tables.py:3 imports engine.stores.kv",
        "engine/models/whisper/decoding.py:2 imports engine.pipelines.decode.run",
        "engine/text/phones.py:2 imports engine.runtime.parts",
        "engine/text/words.py:1 imports engine.pipelines.decode.run",
    ]


# -- family ties: what only the families and the registry know --------------------------------------------------------
# The registry: the modules besides the families' folders that may know a family by its folder, loader or name. The
# other modules of engine.models (its face, engine.models.common, engine.models.random_folder) are shared by every
# family and know none of them: they hold to the rule like the rest of engine/ and jobs/.
REGISTRY = ("engine/models/family.py", "engine/models/interface.py")
TIED = ("engine", "jobs")  # where the family-tie rule looks


@dataclasses.dataclass(frozen=True)
class FamilyFacts:
    """What names a family outside its folder: its folder (``engine.models.<family>``), its loaders (the top-level
    ``load_*`` functions of its folder), its name (``FAMILY_NAMES`` of engine/models/interface.py, and the folder
    names), and the module-level constants that hold a name (``DEFAULT_FAMILY = "whisper"``)."""

    folders: frozenset[str]
    loaders: frozenset[str]
    names: frozenset[str]
    constants: frozenset[str]


def family_facts(root: pathlib.Path = REPO) -> FamilyFacts:
    models = root / "engine" / "models"
    folders = {p.parent.name for p in models.glob("*/__init__.py")} - {SHARED_BY_FAMILIES}
    loaders = {
        node.name
        for folder in folders
        for path in (models / folder).rglob("*.py")
        for node in parse(path).body
        if isinstance(node, ast.FunctionDef) and node.name.startswith("load_")
    }
    names = set(folders)
    for node in parse(models / "interface.py").body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "FAMILY_NAMES" for t in node.targets):
            names |= set(ast.literal_eval(node.value))
    constants = set()
    for package in TIED:
        for path in (root / package).rglob("*.py"):
            for node in parse(path).body:
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and node.value.value in names:
                    constants |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return FamilyFacts(frozenset(folders), frozenset(loaders), frozenset(names), frozenset(constants))


def _is_family_home(source: pathlib.PurePath, facts: FamilyFacts) -> bool:
    """A family's folder or the registry: where a family may be named."""
    parts = source.parts
    in_folder = len(parts) > 3 and parts[:2] == ("engine", "models") and parts[2] in facts.folders
    return in_folder or source.as_posix() in REGISTRY


def _family_name(node, facts: FamilyFacts) -> str | None:
    """The family name ``node`` is or holds: a string constant, a constant bound to one, or a tuple/list/set of them."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in facts.names:
        return repr(node.value)
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    if name in facts.constants:
        return name
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return next(filter(None, (_family_name(e, facts) for e in node.elts)), None)
    return None


def _dotted(node) -> str:
    """``a.b.c`` of a chain of names, else ''."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else ""
    return ""


def family_ties(root: pathlib.Path = REPO) -> list[str]:
    """``path:line what`` of every tie to a family outside its folder and the registry, in engine/ and jobs/: an import
    from a family's folder, a family's loader named (imported from engine.models, or reached as an attribute of an
    engine.models module), and a comparison (``==``, ``in``, ``match``) with a family's name."""
    facts = family_facts(root)
    found = scan(root, (*PROJECT, "jobs"))
    modules = {str(p.relative_to(root)): p for package in TIED for p in sorted((root / package).rglob("*.py"))}
    ties = []
    for imp in (imp for imports in found.values() for imp in imports):
        parts, source = imp.module.split("."), pathlib.PurePath(imp.source)
        into_a_folder = len(parts) > 2 and parts[:2] == ["engine", "models"] and parts[2] in facts.folders
        if into_a_folder and source.parts[0] in TIED and not _is_family_home(source, facts):
            ties.append((imp.source, imp.line, f"imports {imp.module}"))
    for source, path in modules.items():
        if _is_family_home(pathlib.PurePath(source), facts):
            continue
        tree = parse(path)
        bound = {}  # local name -> the engine.models module or loader it was imported as
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(MODELS):
                for a in node.names:
                    bound[a.asname or a.name] = f"{node.module}.{a.name}"
                    if a.name in facts.loaders:
                        ties.append((source, node.lineno, f"names {a.name}"))
            elif isinstance(node, ast.Import):
                bound |= {a.asname: a.name for a in node.names if a.asname and a.name.startswith(MODELS)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and node.id in facts.loaders and bound.get(node.id, "").startswith(MODELS):
                ties.append((source, node.lineno, f"names {node.id}"))
            elif isinstance(node, ast.Attribute) and node.attr in facts.loaders:
                base = _dotted(node.value)
                head, _, rest = base.partition(".")
                if ".".join(filter(None, [bound.get(head, head), rest])).startswith(MODELS):
                    ties.append((source, node.lineno, f"names {node.attr}"))
            elif isinstance(node, ast.Compare):
                said = next(filter(None, (_family_name(n, facts) for n in (node.left, *node.comparators))), None)
                if said:
                    ties.append((source, node.lineno, f"compares with {said}"))
            elif isinstance(node, ast.MatchValue) and _family_name(node.value, facts):
                ties.append((source, node.lineno, f"matches {_family_name(node.value, facts)}"))
    return [f"{source}:{line} {what}" for source, line, what in sorted(set(ties))]


def test_no_module_outside_the_families_and_the_registry_is_tied_to_a_family():
    facts = family_facts()
    assert {"whisper", "owsm", "fastconformer"} <= facts.folders <= facts.names
    assert {"load_whisper", "load_owsm", "load_canary", "load_wav2vec2", "load_w2vbert"} <= facts.loaders
    ties = family_ties()
    why = (
        "modules outside engine/models/<family>/ and the registry (engine/models/family.py, interface.py) tied to a "
        "family (ask the interface what the model can do, the registry which family a store is):"
    )
    assert not ties, "\n".join([why, *ties])


def test_family_tie_rule_catches_planted_ties(tmp_path):
    loader = "def load_whisper(source):\n    pass\n"
    root = plant(
        tmp_path,
        {
            "engine/models/__init__.py": "",
            "engine/models/interface.py": 'FAMILY_NAMES = ("whisper", "owsm")\nDEFAULT_FAMILY = "whisper"\n',
            "engine/models/family.py": "from engine.models.whisper.loaded import load_whisper\n",  # the registry
            "engine/models/common/__init__.py": "",
            "engine/models/common/io.py": "def f(family):\n    return family == 'owsm'\n",
            "engine/models/whisper/__init__.py": "",
            "engine/models/whisper/loaded.py": loader + "\ndef f(name):\n    return name == 'whisper'\n",
            "engine/models/owsm/__init__.py": "",
            "engine/models/owsm/loaded.py": "def load_owsm(source):\n    pass\n\ndef _load_stats():\n    pass\n",
            "engine/stores/__init__.py": "",
            "engine/stores/schema.py": """
                DEFAULT_FAMILY = "whisper"

                def dims(d, family=DEFAULT_FAMILY):
                    return d if family == DEFAULT_FAMILY else {}
                """,
            "engine/pipelines/__init__.py": "",
            "engine/pipelines/decode.py": """
                from engine.models import family as registry
                from engine.models.family import FAMILIES, load_whisper
                from engine.models.interface import DEFAULT_FAMILY

                def run(info, model):
                    if FAMILIES[info.family].decoder is not registry.load_whisper:
                        return load_whisper(model)
                    if info.family in ("owsm", "other") or "whispering" == info.model:
                        return None
                    match info.family:
                        case "owsm":
                            return 1
                    return info.family != DEFAULT_FAMILY
                """,
            "engine/pipelines/align.py": """
                def run(config):
                    # lazy: planted
                    from engine.models.whisper import loaded

                    def load_whisper(x):  # a name of its own, not the family's loader
                        return x
                    return loaded.load_whisper(config), load_whisper(config), config.load_owsm
                """,
            "jobs/__init__.py": "",
            "jobs/decode.py": "import engine.models.owsm.loaded\nx = engine.models.owsm.loaded.load_owsm('a')\n",
        },
    )
    facts = family_facts(root)
    assert (facts.folders, facts.loaders) == ({"whisper", "owsm"}, {"load_whisper", "load_owsm"})
    assert facts.constants == {"DEFAULT_FAMILY"}
    assert family_ties(root) == [
        "engine/models/common/io.py:2 compares with 'owsm'",
        "engine/pipelines/align.py:4 imports engine.models.whisper.loaded",
        "engine/pipelines/align.py:8 names load_whisper",
        "engine/pipelines/decode.py:3 names load_whisper",
        "engine/pipelines/decode.py:7 names load_whisper",
        "engine/pipelines/decode.py:8 names load_whisper",
        "engine/pipelines/decode.py:9 compares with 'owsm'",
        "engine/pipelines/decode.py:12 matches 'owsm'",
        "engine/pipelines/decode.py:14 compares with DEFAULT_FAMILY",
        "engine/stores/schema.py:5 compares with DEFAULT_FAMILY",
        "jobs/decode.py:1 imports engine.models.owsm.loaded",
        "jobs/decode.py:2 names load_owsm",
    ]


# -- capabilities are declared, never probed ---------------------------------------------------------------------------
PROBE_FREE = ("engine/pipelines", "engine/runtime", "jobs")  # where models are used


def declared_members(root: pathlib.Path = REPO, protocol: str | None = None) -> set[str]:
    """The members the protocols of engine/models/interface.py declare (``Encoder``, ``Decoder``, ...; ``protocol``:
    that one only)."""
    members = set()
    for node in parse(root / "engine" / "models" / "interface.py").body:
        if not isinstance(node, ast.ClassDef) or node.name != (protocol or node.name):
            continue
        if any(getattr(b, "id", "") == "Protocol" for b in node.bases):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add(item.target.id)
                elif isinstance(item, ast.FunctionDef) and not item.name.startswith("__"):
                    members.add(item.name)
    return members


def capability_probes(root: pathlib.Path = REPO) -> list[str]:
    """``path:line`` of every ``hasattr(x, "m")`` or ``getattr(x, "m", default)`` in ``PROBE_FREE`` whose ``m`` an
    interface protocol declares: what the interface declares is read, never probed for."""
    members, bad = declared_members(root), []
    for folder in PROBE_FREE:
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(parse(path)):
                if not (isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("hasattr", "getattr")):
                    continue
                probe = node.func.id == "hasattr" or len(node.args) + len(node.keywords) > 2
                name = node.args[1] if len(node.args) > 1 else None
                if probe and isinstance(name, ast.Constant) and name.value in members:
                    bad.append(f"{path.relative_to(root)}:{node.lineno} probes {name.value}")
    return bad


def test_no_capability_is_probed():
    assert {"window_samples", "pads_windows", "min_samples", "ffn_counts"} <= declared_members()
    bad = capability_probes()
    why = "capabilities the interface declares are read, not probed (declare a missing one as None or False):"
    assert not bad, "\n".join([why, *bad])


def test_probe_rule_catches_planted_probes(tmp_path):
    root = plant(
        tmp_path,
        {
            "engine/models/interface.py": """
                from typing import Protocol

                class Encoder(Protocol):
                    window_samples: int
                    ffn_counts: object

                    def cost(self, samples): ...

                class Plain:
                    column_mapping: dict
                """,
            "engine/pipelines/encode.py": """
                def plan(encoder, source, config):
                    window = getattr(encoder, "window_samples", 480000)
                    mapping = getattr(source, "column_mapping", None)  # no protocol's member
                    return window, getattr(encoder, "window_samples"), getattr(config, "run", None), mapping
                """,
            "engine/data/audio.py": "def f(e):\n    return hasattr(e, 'cost')\n",  # no model is used there
            "jobs/neurons.py": "def f(e):\n    if not hasattr(e, 'ffn_counts'):\n        return hasattr(e, 'x')\n",
        },
    )
    assert declared_members(root) == {"window_samples", "ffn_counts", "cost"}
    assert capability_probes(root) == ["engine/pipelines/encode.py:3 probes window_samples",
                                       "jobs/neurons.py:2 probes ffn_counts"]  # fmt: skip


def test_no_module_is_over_the_line_limit():
    bad = long_modules()
    assert not bad, f"modules over {MAX_LINES} lines (split each into modules of one concept):\n" + "\n".join(bad)


def test_line_limit_catches_a_planted_long_module(tmp_path):
    files = {"engine/short.py": "x = 1\n" * 3, "jobs/long.py": "x = 1\n" * 4, "bench/b.py": "x\n" * 9}
    root = plant(tmp_path, {**files, "tests/t.py": "x\n" * 9, "bench/ok.py": "x\n" * 3})  # tests/ is not sized
    assert long_modules(root, limit=3) == ["bench/b.py: 9 lines", "jobs/long.py: 4 lines"]


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


# The modules that may import by a string, and why: nothing imports them, so the arrows they hide lead nowhere back.
STRING_IMPORTERS = {
    "engine/__init__.py": "the package face loads each name on first use, so that `import engine` stays cheap",
    "jobs/cli.py": "the command line runs the job it is given by name (`babelgrid encode` runs jobs.encode)",
    "jobs/studies/spec.py": "a study's keys are checked against each job's flags, listed by importing each job in turn",
}


def string_imports(root: pathlib.Path = REPO) -> list[str]:
    """``path:line`` of every call that imports a module by a string in engine/, kernels/ and jobs/ under ``root``,
    but in ``STRING_IMPORTERS``: ``import_module(...)`` however reached (``importlib.import_module``, a bare name
    imported from importlib), ``__import__(...)`` and ``runpy.run_module(...)``."""
    bad = []
    for package in (*PROJECT, "jobs"):
        for path in sorted((root / package).rglob("*.py")):
            source = path.relative_to(root)
            if source.as_posix() in STRING_IMPORTERS:
                continue
            for node in ast.walk(parse(path)):
                if isinstance(node, ast.Call):
                    func = node.func
                    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                    if name in ("import_module", "__import__", "run_module"):
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
            "jobs/__init__.py": "",
            "jobs/cli.py": "import runpy\nrunpy.run_module('jobs.encode')\n",  # the command line may
            "jobs/common.py": "import importlib\n\ndef plan(m):\n    return importlib.import_module(m).plan\n",
            "jobs/encode.py": "from runpy import run_module\nrun_module('jobs.common')\n",
        },
    )
    assert string_imports(root) == [
        "engine/a.py:4",
        "engine/b.py:2",
        "kernels/k.py:1",
        "jobs/common.py:4",
        "jobs/encode.py:2",
    ]


def _imported_packages(path: pathlib.Path) -> set[str]:
    tree = parse(path)
    found = {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    return found | {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}


@pytest.mark.parametrize("package", PROJECT)
def test_library_code_reads_no_flags(package):
    offenders = [str(p.relative_to(REPO)) for p in (REPO / package).rglob("*.py") if "absl" in _imported_packages(p)]
    assert not offenders, f"flags belong in jobs/ only: {offenders} import absl"


def face_gaps(root: pathlib.Path = REPO) -> list[str]:
    """What the package face (``_FACE`` of engine/__init__.py) lacks of the jobs': each ``run_*`` function of an
    ``engine/pipelines/<job>/run.py`` and the config class its first parameter takes, each from the module that
    defines it."""
    face_tree = parse(root / "engine" / "__init__.py")
    face = next(
        ast.literal_eval(n.value)
        for n in face_tree.body
        if isinstance(n, (ast.Assign, ast.AnnAssign)) and "_FACE" in {getattr(t, "id", "") for t in _targets(n)}
    )

    def defined(module: str) -> set[str]:
        path = root / pathlib.Path(*module.split("."))
        path = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if not path.exists():
            return set()
        body = parse(path).body
        return {n.name for n in body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}

    gaps = []
    for run in sorted((root / "engine" / "pipelines").glob("*/run.py")):
        for node in parse(run).body:
            if not (isinstance(node, ast.FunctionDef) and node.name.startswith("run_")) or not node.args.args:
                continue
            hint = node.args.args[0].annotation
            config = hint.id if isinstance(hint, ast.Name) else getattr(hint, "value", None)
            for name in filter(None, (node.name, config)):
                if name not in face:
                    gaps.append(f"{name} ({run.relative_to(root)}) is not in the face")
                elif name not in defined(face[name]):
                    gaps.append(f"the face takes {name} from {face[name]}, which does not define it")
    return gaps


def _targets(node) -> list:
    return node.targets if isinstance(node, ast.Assign) else [node.target]


def test_the_face_gives_every_job_s_run_and_config():
    gaps = face_gaps()
    why = "engine/__init__.py's _FACE should map each job's run_<job> and its config to the module defining it:"
    assert not gaps, "\n".join([why, *gaps])


def test_face_rule_catches_a_planted_gap(tmp_path):
    face = {
        "run_a": "engine.pipelines.a.run",
        "AConfig": "engine.pipelines.a.config",
        "run_b": "engine.pipelines.b.run",
    }
    face |= {"run_d": "engine.pipelines.d.config", "DConfig": "engine.pipelines.d.config"}  # run_d: the wrong module
    root = plant(
        tmp_path,
        {
            "engine/__init__.py": f"_FACE = {face!r}\n",
            "engine/pipelines/a/config.py": "class AConfig:\n    pass\n",
            "engine/pipelines/a/run.py": "def run_a(config: AConfig):\n    pass\n\ndef _run_unit(x):\n    pass\n",
            "engine/pipelines/b/run.py": "def run_b(config: 'BConfig', store=None):\n    pass\n",
            "engine/pipelines/c/run.py": "from x import CConfig\n\ndef run_c(config: CConfig):\n    pass\n",
            "engine/pipelines/d/config.py": "class DConfig:\n    pass\n",
            "engine/pipelines/d/run.py": "from .config import DConfig\n\ndef run_d(config: DConfig):\n    pass\n",
        },
    )
    assert face_gaps(root) == [
        "BConfig (engine/pipelines/b/run.py) is not in the face",
        "run_c (engine/pipelines/c/run.py) is not in the face",
        "CConfig (engine/pipelines/c/run.py) is not in the face",
        "the face takes run_d from engine.pipelines.d.config, which does not define it",
    ]


def test_engine_gives_its_public_face():
    engine = importlib.import_module("engine")
    missing = [name for name in FACE if not hasattr(engine, name)]
    assert not missing, f"engine/__init__.py should give {missing} (the entry points a notebook needs)"
