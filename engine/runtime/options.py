"""Job configs: defaults written once, in the dataclass; the run options every job shares; one-line config errors.

A job's config is a frozen dataclass whose fields carry their help text (``option``). The job's command line is
generated from those fields (``jobs.common.define_config_flags``): a flag's name, type, default, choices and help are
the field's, so a default is never written twice, and a notebook calling ``run_encode(EncodeConfig(...))`` gets the
same defaults as ``python -m jobs.encode``. Fields whose values are lists (languages, layers) carry a ``parse`` rule
that turns the flag's text into the field's tuple.

The dataclass is the source rather than the flags because the library is used without flags (notebooks, tests,
``babelgrid run`` studies that build configs), and ``engine/`` never imports absl.

``RunOptions`` is what every job shares (output, progress, claims, lease, kvstore spec, strict, matmul precision);
each job's config nests one as ``config.run``. Every invalid value raises ``ConfigError``, a babelgrid error whose
message is one line naming the field, the value and what it accepts.
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import math
import os
import re
from collections.abc import Callable, Iterable

from engine.errors import BabelgridError
from engine.listing import shown
from engine.stores.kv import DEFAULT_STORE_TIMEOUT

DEFAULT_CLAIM_TTL = 60.0  # seconds; renewed every ttl / 3, so a claim survives two missed renewals
# seconds a jax.distributed process may be silent before it is declared dead (--heartbeat_timeout): JAX's own default,
# 100 s, ended two-process runs with DEADLINE_EXCEEDED on nodes loaded 22-47 deep
DEFAULT_HEARTBEAT_TIMEOUT = 300
MATMUL_PRECISIONS = ("highest", "default")
# Layer indices run from 0 to MAX_LAYER: no model babelgrid loads has 200 layers, and a range is bounded before it is
# expanded (``--layers 1-100000000`` held 12 GB, and its error line was 1 GB)
MAX_LAYER = 1023


class ConfigError(BabelgridError, ValueError):
    """A config value a job cannot run with."""


def option(default=dataclasses.MISSING, help: str = "", *, choices: Iterable | None = None, parse: str | None = None,
           minimum: float | None = None, positive: bool = False, required: bool = False,
           flag: str | None = None, reads: bool | str | Callable[[str], tuple[str, ...]] = False):  # fmt: skip
    """A config field with its flag's help text.

    choices: the values allowed (an enum flag); parse: how a flag's text becomes the value (``PARSERS``: ``list``,
    ``layers``, ``ints``, ``floats``, ``cells``, ``size``); minimum / positive: a number's lower bound; required: the
    flag is required (and without a default, so is the field); flag: the flag's name when it is not the field's
    (``--measure`` for ``measures``); reads: the field names a store or folder the job reads (``check_apart``),
    ``"beside"`` for one the job writes its files into (retrieval's similarity store), or a function of the value
    giving the locations it reads (encode's ``--dataset``: ``engine.data.sources.dataset_locations``).
    """
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "parse": parse,
                "minimum": minimum, "positive": positive, "required": required, "flag": flag,
                "reads": reads}  # fmt: skip
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, (list, dict, set)):
        raise TypeError("option defaults must be immutable (use a tuple)")
    return dataclasses.field(default=default, metadata=metadata)


def validate(config) -> None:
    """Checks every field of the dataclass ``config`` against its ``option`` metadata; ``ConfigError`` on the first
    bad one. Configs call it first in ``__post_init__``, then check what spans fields."""
    for field in dataclasses.fields(config):
        meta, value = field.metadata, getattr(config, field.name)
        value = _normalised(config, field, meta, value)
        if not meta or value is None:
            continue
        if meta.get("parse") == "layers" and isinstance(value, tuple):
            _check_layers(field.name, value)
        if _holds_languages(field.name) and isinstance(value, tuple):
            _check_once(field.name, value)
        choices = meta.get("choices")
        if choices is not None:
            values = value if isinstance(value, tuple) else (value,)
            bad = [v for v in values if v not in choices]
            if bad:
                raise ConfigError(f"{field.name}: {bad[0]!r} is not one of {', '.join(map(str, choices))}")
        numbers = value if isinstance(value, tuple) else (value,)
        if any(isinstance(v, float) and not math.isfinite(v) for v in numbers):  # nan passes every comparison
            raise ConfigError(f"{field.name} must be a finite number, got {value!r}")
        if meta.get("positive") and not value > 0:
            raise ConfigError(f"{field.name} must be positive, got {value!r}")
        if meta.get("minimum") is not None and value < meta["minimum"]:
            raise ConfigError(f"{field.name} must be >= {meta['minimum']}, got {value!r}")
    check_apart(config)


def _holds_languages(name: str) -> bool:
    """Whether a field lists languages: every job names them ``langs`` (``source_langs``, ``eval_langs``)."""
    return name == "langs" or name.endswith("_langs")


def _check_once(name: str, value: tuple) -> None:
    """A list of languages names each once: ``heads --langs en,en,de`` scored en against itself (R@1 1.0)."""
    repeated = [v for v, n in collections.Counter(value).items() if n > 1]
    if repeated:
        raise ConfigError(f"{name}: {shown(repeated)} given more than once; name each language once")


def _check_layers(name: str, layers: tuple) -> None:
    bad = [x for x in layers if isinstance(x, bool) or not isinstance(x, int) or not 0 <= x <= MAX_LAYER]
    if bad:
        raise ConfigError(f"{name}: {shown(bad)} out of range; layer indices run from 0 to {MAX_LAYER}")


def _normalised(config, field, meta, value):
    """An enumerated value as the field stores it, set on the (frozen) config: ``" mean "`` is ``"mean"`` (a value
    recorded with its spaces would refuse the resume that gives it without); a list of choices given as ``''`` or
    ``'all'`` (None from ``parse_list``) is every choice, or none where the default is none."""
    if not meta or not meta.get("choices"):
        return value
    if isinstance(value, str):
        value = value.strip()
    elif isinstance(value, tuple):
        value = tuple(v.strip() if isinstance(v, str) else v for v in value)
    elif value is None and meta.get("parse") == "list" and isinstance(field.default, tuple):
        value = tuple(meta["choices"]) if field.default else ()
    object.__setattr__(config, field.name, value)
    return value


def canonical_location(url: str) -> str:
    """A store location as one string per place: a local path (or ``file://`` URL) absolute, symbolic links
    resolved; a kvstore URL without its trailing '/'."""
    url = os.fspath(url)
    if url.startswith("file://"):
        url = url[len("file://") :]
    if "://" in url:
        return url.rstrip("/")
    return os.path.realpath(os.path.expanduser(url))


def _parts(url: str) -> tuple[str, ...]:
    scheme, sep, rest = canonical_location(url).rpartition("://")
    return (scheme if sep else "file", *(p for p in rest.split("/") if p))


def read_locations(reads, value) -> tuple[str, ...]:
    """The locations a field marked ``reads`` (its ``option``) names in ``value``: the value, each of a list, or what
    a function of it gives (a dataset spec's folder)."""
    if not reads or not value:
        return ()
    locations = reads(value) if callable(reads) else value if isinstance(value, tuple) else (value,)
    return tuple(v for v in locations if v)


def _local_slashes(name: str, location: str) -> str:
    """``location``, refused when it is a local path holding a backslash: TensorStore's file kvstore takes ``\\`` for
    a folder separator and the path checks here would not, so ``DIR\\store\\sim`` would land inside ``DIR/store``."""
    if "\\" in location and "://" not in location.replace("file://", "", 1):
        raise ConfigError(
            f"{name} {location!r} holds a backslash: write local paths with '/' (TensorStore reads '\\' as a folder "
            "separator, so the files would land elsewhere than the name says)"
        )
    return location


def check_apart(config) -> None:
    """Refuses a ``run.out`` inside a location the job reads (a field an ``option`` marks ``reads``), or such a
    location inside ``run.out``, or the two the same unless the job writes beside what it reads (``"beside"``):
    a store and an output never nest, so that neither is written into the other and ``verify`` never takes the mix
    for one store."""
    run = getattr(config, "run", None)
    out = getattr(run, "out", None)
    if not isinstance(run, RunOptions) or not out:
        return
    out_parts = _parts(_local_slashes("out", out))
    for field in dataclasses.fields(config):
        reads, value = (field.metadata or {}).get("reads"), getattr(config, field.name)
        if not reads or not value:
            continue
        for location in read_locations(reads, value):
            parts = _parts(_local_slashes(field.name, location))
            if parts == out_parts and reads == "beside":
                continue
            if out_parts[: len(parts)] == parts or parts[: len(out_parts)] == out_parts:
                where = "is" if parts == out_parts else "is inside" if len(out_parts) > len(parts) else "holds"
                raise ConfigError(
                    f"out {out!r} {where} {field.name} {location!r}, which this job reads: a store and an output never "
                    "nest (each would be written into the other). Choose an output folder outside it"
                )


def check_choice(what: str, value, choices: Iterable) -> None:
    """A value against its choices, with a one-line error that lists them."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"{what} must be one of {choices}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """What every job shares. ``out`` is the job's output (a store or folder: local path or kvstore URL)."""

    out: str | None = option(None, "output: local path or TensorStore kvstore URL (gs://, s3://, file://)")
    progress: bool | None = option(
        None, "show a progress bar (default: only when stderr is a terminal, so batch logs stay readable)"
    )
    claim_ttl: float = option(
        DEFAULT_CLAIM_TTL,
        "seconds a work claim lives unrenewed: the other processes take a dead process's work this long after it died",
        positive=True,
    )
    break_lease: bool = option(
        False,
        "take over another run's unexpired writer lease on the output (--out; verify: the --location it "
        "repairs), only when that run is known to be dead",
    )
    worker: bool = option(
        False,
        "run as one of any number of independent workers of the same command on --out (a SLURM array task, a "
        "Kubernetes indexed-Job pod, a Ray task): no coordinator, rank or barrier; a worker may start, die and be "
        "requeued at any time, and takes the next unit nobody holds (BUILD.md, 'On accelerators and clusters'). "
        "Without it a second writer on --out is refused",
    )
    compile_cache: str | None = option(
        None,
        "folder of JAX's persistent compilation cache, shared by every worker that can read it (a shared disk): a "
        "kernel compiled by one is loaded by the others. Entries are keyed by device kind on GPU and TPU, and by "
        "device on CPU (the same machine type shares them)",
    )
    kvstore_spec: str | None = option(
        None,
        "JSON object merged into the TensorStore kvstore spec of every s3:// and gs:// location, for what the "
        'environment does not set: \'{"endpoint": "http://127.0.0.1:9000", "aws_region": "us-east-1"}\' '
        "(AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY and TENSORSTORE_GCS_HTTP_URL are "
        "read without it; see BUILD.md)",
    )
    store_timeout: float = option(
        DEFAULT_STORE_TIMEOUT,
        "seconds an unreachable or failing s3:// or gs:// location is retried before the job stops with an error "
        "naming it (slow, flaky servers are retried within this bound; a request that moves nothing for a quarter of "
        "it, a network partition, fails and is retried)",
        positive=True,
    )
    strict: bool = option(False, "exit non-zero if anything was skipped")
    memory_budget: int | None = option(
        None,
        "bytes of states one process holds at once, as a size such as 32MiB or 20GiB (all-pairs jobs: languages are "
        "loaded in tiles that fit it, pairs that do not are scored in utterance blocks); default: a share of this "
        "machine's RAM on CPU or of the device's memory on an accelerator (engine.runtime.budget), printed by --plan",
        parse="size",
        positive=True,
    )
    matmul_precision: str = option(
        "highest",
        "float32 matrix products: highest = full float32 everywhere; default = the accelerator's fastest (TF32 on "
        "NVIDIA GPUs, bfloat16 passes on TPUs: 1 to 3 percent of the peak activation away from float32). No effect "
        "on CPUs",
        choices=MATMUL_PRECISIONS,
    )

    def __post_init__(self):
        if isinstance(self.memory_budget, str):  # a notebook's '20GiB', as the flag takes it
            object.__setattr__(self, "memory_budget", parse_size(self.memory_budget))
        validate(self)


# --- flag text -> field value ---------------------------------------------------------------------------------------


def parse_list(value: str | None) -> tuple[str, ...] | None:
    """'a,b, c' -> ('a', 'b', 'c'); '' / 'all' / None -> None (meaning everything)."""
    if value is None or value.strip().lower() in ("", "all"):
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip())


def parse_names(value: str | None) -> tuple[str, ...] | None:
    """'a,b' -> ('a', 'b'); 'all' -> ('all',), a name like any other; '' / None -> None (none). For lists whose
    default is none, where 'all' must not turn into the default (``neurons --intervene all``)."""
    if value is None or not value.strip():
        return None
    return tuple(v.strip() for v in value.split(",") if v.strip()) or None


def parse_layers(value: str | None) -> tuple[int, ...] | None:
    """'all' -> None; '0,3,7' -> (0, 3, 7); '2-5' -> (2, 3, 4, 5)."""
    items = parse_list(value)
    if items is None:
        return None
    out: list[int] = []
    for item in items:
        try:
            lo, sep, hi = item.partition("-")
            lo, hi = int(lo), int(hi if sep else lo)
        except ValueError:
            raise ConfigError(f"layers: {item[:40]!r} is not a layer index or a range like 2-5") from None
        if hi > MAX_LAYER:  # before the range is expanded
            raise ConfigError(f"layers: {item[:40]!r} goes past layer {MAX_LAYER}; layer indices run from 0 to "
                              f"{MAX_LAYER}")  # fmt: skip
        out.extend(range(lo, hi + 1))
        if len(out) > MAX_LAYER + 1:  # repeated items cannot grow it past the indices there are
            out = list(dict.fromkeys(out))
    _check_layers("layers", tuple(out))
    return tuple(dict.fromkeys(out))


def _parse_numbers(kind, name):
    def parse(value: str | None):
        items = parse_list(value)
        if items is None:
            return None
        try:
            return tuple(kind(v) for v in items)
        except ValueError:
            raise ConfigError(f"{value!r} is not a comma-separated list of {name}") from None

    return parse


def parse_cells(value: str | None) -> tuple[str, ...] | None:
    """'a,,b' -> ('a', '', 'b'): one cell per comma, empty cells kept (they mean 'none for this one'); None -> None."""
    if value is None:
        return None
    return tuple(v.strip() for v in value.split(","))


SIZE_UNITS = {"": 1, "b": 1, "k": 2**10, "kib": 2**10, "kb": 10**3, "m": 2**20, "mib": 2**20, "mb": 10**6,
              "g": 2**30, "gib": 2**30, "gb": 10**9, "t": 2**40, "tib": 2**40, "tb": 10**12,
              "p": 2**50, "pib": 2**50, "pb": 10**15}  # fmt: skip
_SIZE = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*")


def parse_size(value: str | int | None) -> int | None:
    """'32MiB' -> 33554432, '1.5GB' -> 1500000000, '20G' -> 20 GiB (K, M, G, T, P alone are binary), '4096' -> bytes;
    None, '' or 'auto' -> None (the default of the option)."""
    if value is None or isinstance(value, int):
        return value
    if value.strip().lower() in ("", "auto"):
        return None
    match = _SIZE.fullmatch(value)
    unit = match and SIZE_UNITS.get(match.group(2).lower())
    if not unit:
        raise ConfigError(f"{value!r} is not a size: write a number and a unit, such as 512MiB, 20GiB or 1.5GB")
    return int(float(match.group(1)) * unit)


PARSERS = {
    "size": parse_size,
    "list": parse_list,
    "names": parse_names,
    "cells": parse_cells,
    "layers": parse_layers,
    "ints": _parse_numbers(int, "integers"),
    "floats": _parse_numbers(float, "numbers"),
}


def format_value(value, parse: str | None, help: str = "") -> str | None:
    """A field's default as its flag's text: tuples joined with commas; None -> 'all' for a list whose None means
    everything (layers, or a help text offering 'all'), else no default."""
    if parse is None:
        return value
    if value is None:
        return "all" if parse == "layers" or (parse == "list" and "'all'" in help) else None
    return ",".join(str(v) for v in value)


def configure(cls, **values):
    """``cls(run=RunOptions(...), ...)`` from one flat set of keyword arguments: the ``RunOptions`` fields (``out``,
    ``progress``, ...) go to ``run``, the others to ``cls``. For notebooks and tests:
    ``run_encode(configure(EncodeConfig, out="/tmp/store", dataset="demo", progress=False))``."""
    run = _as_fields(RunOptions, {k: values.pop(k) for k in list(values) if k in _names(RunOptions)})
    return cls(run=RunOptions(**run), **_as_fields(cls, values))


def _names(cls) -> dict[str, dataclasses.Field]:
    """``cls``'s fields by name and by their flag's name (``measure`` for ``measures``)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return fields | {f.metadata["flag"]: f for f in fields.values() if f.metadata.get("flag")}


def _as_fields(cls, values: dict) -> dict:
    """``values`` keyed by ``cls``'s field names, a flag's name taken for its field's, and a string given to a field
    whose flag parses its text (``layers="4-7"``, ``measures="seqsim,mean"``, ``memory_budget="2GiB"``) parsed as the
    flag would; an unknown name is a ConfigError listing the fields."""
    fields, out = _names(cls), {}
    for key, value in values.items():
        field = fields.get(key)
        if field is None and key != "run":
            close = difflib.get_close_matches(key, fields, n=1)
            raise ConfigError(
                f"{cls.__name__} has no field {key!r}{f' (did you mean {close[0]!r}?)' if close else ''}; its fields: "
                + ", ".join(sorted(f.name for f in dataclasses.fields(cls) if f.name != "run"))
                + ("" if cls is RunOptions else " (and the run options: out, progress, memory_budget, ...)")
            )
        name = key if field is None else field.name
        parse = field.metadata.get("parse") if field is not None else None
        out[name] = PARSERS[parse](value) if parse and isinstance(value, str) else value
    return out
