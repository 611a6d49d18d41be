"""Shared test fixtures: real data beside the checkout, and one tiny random Whisper for every test that needs a model.

The tiny model is a Hugging Face folder (``config.json``, ``model.safetensors``, ``tokenizer.json``) written with NumPy
and the ``safetensors`` library, so that tests and job subprocesses load it the way they load a hub checkpoint,
without torch and without the packaged whisper-base (an optional extra). Fixtures are session-scoped: tests only read
the folder and the loaded model, so the weights are written, loaded and compiled once per session. The same holds for
the packaged whisper-base; its CTranslate2 twin and both encoders' output on the real clips, which only Whisper's
parity modules read, are in tests/models/whisper/conftest.py.
"""

import itertools
import json
import os
import pathlib
import shutil
import sys

import jax
import pytest

from engine.languages import LANGUAGES
from engine.models.whisper.checkpoints.export import write_hf_folder
from engine.models.whisper.dims import ModelDimensions
from engine.models.whisper.random_weights import random_state_dict

REPO = pathlib.Path(__file__).resolve().parents[1]

# The parity tests compare float32 with float32: on a GPU, JAX's default precision would run float32 products as TF32
# (about 1e-3 relative), which no float32 tolerance admits. The jobs default to "highest" too (--matmul_precision).
# No effect on CPUs. `make test-gpu` runs the kernel and model tests there (BUILD.md).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
jax.config.update("jax_default_matmul_precision", os.environ["JAX_DEFAULT_MATMUL_PRECISION"])

# CTranslate2 (the parity modules' reference decoder) and torch run their threads on OpenMP (libgomp), whose idle
# threads spin-wait by default: on a loaded machine the spinning takes the CPU the working thread needs. CTranslate2's
# greedy decode of 4 FLEURS windows (intra_threads=2, load ~16 on the 2-core machine): 19.1 s CPU and 80 s wall
# spinning, 1.5 s and 9 s waiting passively (one thread: 1.3 s and 9.8 s). libgomp reads this when it loads, so it is
# set here, before any test module imports either library; it changes no result.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# The longest test files first. `make test` runs files on two xdist workers, a file whole (--dist loadfile), in the
# order collected (--no-loadscope-reorder: xdist's own order, most tests first, left the slowest files of few tests,
# the real-model parity modules among them, to the end, one worker running them while the other had nothing left).
# Longest first, the last files handed out are the short ones. The seconds: tests/file_seconds.json, written by
# .ci/file_seconds.py from a whole run's junit report; a file it does not list counts 0 (it keeps its place among them).
FILE_SECONDS = json.loads((REPO / "tests" / "file_seconds.json").read_text())


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: -FILE_SECONDS.get(item.nodeid.split("::")[0], 0.0))  # stable: a file stays together


# Where the suite's time goes, test by test: with BABELGRID_TEST_TIMES=<file>, each test (setup, call and teardown, so a
# module fixture is charged to the first test that builds it) appends one JSON line: its wall seconds, this process's
# CPU seconds, and the CPU seconds of the child processes it waited for (the job subprocesses). A test whose wall time
# is far above its CPU time waits (on leases, sleeps, other processes) and would not slow a run with more workers.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    record = os.environ.get("BABELGRID_TEST_TIMES")
    if not record:
        yield
        return
    import resource
    import time

    def now():
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        forked = sys.modules.get("tests.jobs.forkserver")  # jobs forked by tests/jobs/conftest.py's server
        children = children.ru_utime + children.ru_stime + (forked.CHILD_CPU[0] if forked else 0.0)
        return time.perf_counter(), own.ru_utime + own.ru_stime, children

    before = now()
    yield
    after = now()
    wall, cpu, children = (b - a for a, b in zip(before, after, strict=True))
    line = {"test": item.nodeid, "wall": round(wall, 3), "cpu": round(cpu, 3), "children_cpu": round(children, 3)}
    with open(record, "a") as out:
        out.write(json.dumps(line) + "\n")


# Disk: the suite writes about 11 GB of models, stores and clips into pytest's temporary folder (a 2-worker run,
# 2026-11-29), and pytest keeps all of it until the run ends, with the last 3 runs' too. CI shares its disk: one run
# failed on a full disk (ENOSPC in 152 tests) where the machine had 4 GB free. So each test's ``tmp_path`` goes when the
# test passes (``tmp_path_retention_policy = "failed"`` in pyproject.toml), and what a module made with
# ``tmp_path_factory.mktemp`` (its module fixtures, and its tests' own calls) goes when its last test has run, unless a
# test of it failed (kept to look at). Session fixtures' folders (the tiny and turbo models, CTranslate2's base) stay:
# later modules read them. Which scope made a folder: the fixture being set up when ``mktemp`` ran.
_SETTING_UP: list[str] = []  # scopes of the fixtures being set up, innermost last
_MADE_BY_MODULE: list[pathlib.Path] = []  # what the running module made, to remove at its end
_FAILED_FILES: set[pathlib.Path] = set()
_mktemp = pytest.TempPathFactory.mktemp


def _mktemp_recorded(self, basename: str, numbered: bool = True) -> pathlib.Path:
    path = _mktemp(self, basename, numbered)
    if not _SETTING_UP or _SETTING_UP[-1] != "session":
        _MADE_BY_MODULE.append(path)
    return path


pytest.TempPathFactory.mktemp = _mktemp_recorded


class _ModuleFoldersGo:
    """The hooks, as a plugin of the whole run: a conftest's own hooks do not see session fixtures being set up."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        _SETTING_UP.append(fixturedef.scope)
        yield
        _SETTING_UP.pop()

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        if outcome.get_result().failed:
            _FAILED_FILES.add(item.path)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item, nextitem):
        yield  # the module's fixtures are torn down here when ``nextitem`` is another file's
        if nextitem is not None and nextitem.path == item.path:
            return
        made, _MADE_BY_MODULE[:] = list(_MADE_BY_MODULE), []
        if item.path not in _FAILED_FILES:
            for path in made:
                shutil.rmtree(path, ignore_errors=True)


def pytest_configure(config):
    config.pluginmanager.register(_ModuleFoldersGo(), "babelgrid-module-folders")


# Job tests start a few hundred `python -m jobs.<job>` processes, most of them on the tiny model with the same shapes,
# and the in-process tests compile the same encoders, decoders and gradients again in each xdist worker: compiling is
# most of the suite's CPU time (a profile of the whole suite, 2026-11-26: 1744 s of JAX compile events in the test
# processes against 2440 s of their CPU). All of them, test processes and job processes, share JAX's persistent
# compilation cache, in a folder of this run (pytest's temporary folder of the run, which the xdist workers share and
# pytest's retention removes, so no run reads another's), every program cached however quick its compile: a program
# one process compiled is a hit for the others. Job, head-mask, neurons, probes and workers tests on 2 workers: 488 s
# of CPU without the test processes in the cache, 422 s with. The kernel tests (tests/kernels) compile many small
# programs at shapes no other test uses: there the cache only adds writes (217 s against 198 s), so their modules
# run with it off (``_kernel_modules_skip_the_cache``). A cache hit is the same executable; no result changes.
# JAX_COMPILATION_CACHE_DIR set by the caller is kept ("" turns the cache off).
@pytest.fixture(autouse=True, scope="session")
def _processes_share_compiled_programs(tmp_path_factory, worker_id):
    if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
        run = tmp_path_factory.getbasetemp()
        cache = (run.parent if worker_id != "master" else run) / "jax-cache"
        cache.mkdir(exist_ok=True)
        os.environ.update(
            JAX_COMPILATION_CACHE_DIR=str(cache),
            JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
            JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
        )
    if os.environ["JAX_COMPILATION_CACHE_DIR"]:
        _point_cache(os.environ["JAX_COMPILATION_CACHE_DIR"], enabled=True)
    yield


def _point_cache(folder: str, enabled: bool) -> None:
    """This process's persistent compilation cache at ``folder`` as the jobs' ``--compile_cache`` points it
    (``use_cache``: every program cached), on or off. JAX decides whether to use the cache at its first compile and
    remembers it: ``reset_cache`` makes the next compile decide again."""
    from jax.experimental.compilation_cache import compilation_cache

    from engine.runtime.compiles import use_cache

    use_cache(folder)
    jax.config.update("jax_enable_compilation_cache", enabled)
    compilation_cache.reset_cache()


@pytest.fixture(autouse=True, scope="module")
def _kernel_modules_skip_the_cache(request, _processes_share_compiled_programs):
    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR", "")
    kernels = REPO / "tests" / "kernels"
    if not folder or kernels not in request.path.parents:
        yield
        return
    _point_cache(folder, enabled=False)
    yield
    _point_cache(folder, enabled=True)


@pytest.fixture(autouse=True, scope="module")
def _jax_stays_32_bit():
    """A test module that leaves JAX in 64-bit mode (scikit-bio's import turns it on for the whole process) would
    change the dtypes of every later module on its xdist worker: named here, at the module that did it."""
    yield
    assert not jax.config.jax_enable_x64, "this test module left jax_enable_x64 on: restore it where it was set"


FLEURS_SAMPLE = pathlib.Path(
    os.environ.get("BABELGRID_FLEURS_SAMPLE", REPO.parent / "shared" / "data" / "fleurs-sample")
)

# Multilingual vocabulary (51865 ids, as whisper-base), 2 + 2 blocks of width 64: encoder layers 0..3.
TINY_DIMS = ModelDimensions(80, 1500, 64, 4, 2, 51865, 448, 64, 4, 2)
TINY_SEED = 3


@pytest.fixture(scope="session")
def fleurs_dir() -> pathlib.Path:
    """The 50 real FLEURS clips (``fleurs-<lang>-<nnn>.ogg`` + ``.txt``) beside the checkout."""
    if not FLEURS_SAMPLE.is_dir():
        pytest.skip(f"real FLEURS clips not found at {FLEURS_SAMPLE} (set BABELGRID_FLEURS_SAMPLE)")
    return FLEURS_SAMPLE


@pytest.fixture(scope="session")
def fleurs_clips(fleurs_dir) -> list[pathlib.Path]:
    clips = sorted(p for p in fleurs_dir.iterdir() if p.suffix in (".opus", ".ogg", ".wav", ".flac"))
    assert len(clips) == 50, f"expected 50 clips in {fleurs_dir}, found {len(clips)}"
    return clips


# -- the tiny random model -------------------------------------------------------------------------------------------


def write_byte_level_tokenizer(path: pathlib.Path, n_text: int = 50257, num_languages: int = 99) -> None:
    """A planted ``tokenizer.json`` with OpenAI's multilingual id layout: a byte-level BPE of ``n_text`` tokens (the
    256 bytes, then pairs of them), then ``<|endoftext|>`` and the other special tokens in OpenAI's order."""
    import tokenizers

    alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
    pairs = list(itertools.islice(itertools.product(alphabet, repeat=2), n_text - len(alphabet)))
    vocab = {text: i for i, text in enumerate(alphabet + [a + b for a, b in pairs])}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, pairs))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tasks = ("translate", "transcribe", "startoflm", "startofprev", "nospeech", "notimestamps")
    specials = ["endoftext", "startoftranscript", *list(LANGUAGES)[:num_languages], *tasks]
    specials += [f"{i * 0.02:.2f}" for i in range(1501)]
    tok.add_special_tokens([tokenizers.AddedToken(f"<|{s}|>", normalized=False, special=True) for s in specials])
    tok.save(str(path))


def write_tiny_hf_folder(
    folder: pathlib.Path, dims: ModelDimensions = TINY_DIMS, seed: int = TINY_SEED
) -> pathlib.Path:
    """A random Whisper of ``dims`` as a Hugging Face folder in ``folder`` (created), written by the library's own
    exporter (``engine.models.whisper.checkpoints.export``), plus a byte-level tokenizer for the multilingual
    vocabulary."""
    write_hf_folder(folder, random_state_dict(dims, seed=seed), dims)
    if dims.n_vocab == 51865:
        write_byte_level_tokenizer(folder / "tokenizer.json")
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> pathlib.Path:
    """``TINY_DIMS`` with seed ``TINY_SEED`` as a Hugging Face folder: pass it to ``load_whisper`` or ``--model``."""
    return write_tiny_hf_folder(tmp_path_factory.mktemp("tiny-model") / "tiny-random")


def written_once(tmp_path_factory, worker_id: str, name: str, write) -> pathlib.Path:
    """A folder ``write(folder)`` fills (created empty first), written once per session for all xdist workers: the
    first worker to ask writes it under a file lock in the session's shared temporary folder, the others find it
    there. A worker killed mid-write leaves no ``.done`` beside it, so the next one writes it again. Read it, do not
    change it."""
    if worker_id == "master":
        folder = tmp_path_factory.mktemp(name) / name
        folder.mkdir()
        write(folder)
        return folder
    from filelock import FileLock

    folder = tmp_path_factory.getbasetemp().parent / name
    done = folder.with_name(folder.name + ".done")
    with FileLock(f"{folder}.lock"):
        if not done.is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            write(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def turbo_model_dir(tmp_path_factory, worker_id) -> pathlib.Path:
    """A random-weight Whisper large-v3-turbo as a Hugging Face folder: turbo's config, generation config (alignment
    heads), v3 tokenizer, and 2 encoder blocks instead of 32 (``tests/models/whisper/turbo_model.py``); about 840
    MB and 9 s, written once for all xdist workers (``written_once``)."""
    from tests.models.whisper.turbo_model import write_turbo_folder

    return written_once(tmp_path_factory, worker_id, "turbo-random", write_turbo_folder)


@pytest.fixture(scope="session")
def tiny_whisper(tiny_model_dir):
    """The tiny model loaded once (``LoadedWhisper``), float32: read it, do not change it."""
    from engine.models.whisper.loaded import load_whisper

    return load_whisper(tiny_model_dir)


# -- the packaged whisper-base ---------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def base_whisper():
    """The packaged whisper-base (``load_whisper()``), float32."""
    from engine.models.whisper.loaded import load_whisper

    return load_whisper()
