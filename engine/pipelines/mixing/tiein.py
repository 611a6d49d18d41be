"""The mixing job's tie-in to interp (``--interp``): do the words that carry cross-lingual alignment mix more or less
than the other words of the same utterances?

A word carries alignment at a layer when the interp job matched it across languages there: it is one side of a
mutual-best pair of parallel utterances (``rank`` 0, ``mutual``) in any ``<a>__<b>/pairs.parquet`` of the interp
folder, at that ``layer`` and ``pooling``. Words are the align job's (``id``, ``word_index``), as both jobs read
them. Interp's ``layer`` is a stored layer; the mixing of block ``l`` is that of stored layer ``l``.

``interp.parquet``, one row per language, block and pooling where both jobs scored words, over the utterances interp
paired at that layer (every word of them weighing the same): ``aligned_words`` and ``other_words`` (counts),
``self_aligned`` and ``self_other`` (their mean self share), ``reach_aligned`` and ``reach_other`` (their mean reach
in words, ``sum_t m[i, t] |i - t|``).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine.pipelines.mixing.config import MixingError
from engine.pipelines.mixing.summary import word_rows
from engine.stores.integrity import parquet_bytes
from engine.stores.kv import open_kvstore, read_value
from engine.stores.parts import read_table

TABLE = "interp.parquet"
PAIRS = "pairs.parquet"
COLUMNS = ("lang", "layer", "pooling", "aligned_words", "other_words", "self_aligned", "self_other", "reach_aligned",
           "reach_other")  # fmt: skip


def aligned(url: str) -> tuple[dict, dict]:
    """``({(lang, layer, pooling): {(id, word_index)}}, {(lang, layer, pooling): {id}})``: the words of mutual-best
    parallel pairs, and the utterances interp paired, from every ``<a>__<b>/pairs.parquet`` under ``url``."""
    _, kv = open_kvstore(url)
    keys = sorted(k.decode() for k in kv.list().result() if k.decode().endswith(f"/{PAIRS}"))
    if not keys:
        raise MixingError(f"--interp {url!r} holds no <a>__<b>/{PAIRS}: give an interp job's output folder")
    words: dict = {}
    paired: dict = {}
    for key in keys:
        a, b = key.split("/")[0].split("__")
        found = read_value(kv, key, url)
        cols = ["id_a", "id_b", "rank", "layer", "pooling", "word_index_a", "word_index_b", "mutual"]
        t = read_table(found.value, key, url, "interp").select(cols).to_pydict()
        for ia, ib, rank, layer, pooling, wa, wb, mutual in zip(*(t[c] for c in cols), strict=True):
            if rank != 0:
                continue
            for lang, uid, wi in ((a, ia, wa), (b, ib, wb)):
                at = (lang, int(layer), str(pooling))
                paired.setdefault(at, set()).add(str(uid))
                if mutual:
                    words.setdefault(at, set()).add((str(uid), int(wi)))
    return words, paired


def rows(parts: dict[str, dict], found: tuple[dict, dict]) -> list[dict]:
    """The table's rows (module docstring) from the mixing parts (``{lang: arrays}``) and ``aligned``'s answer."""
    words, paired = found
    out = []
    for (lang, layer, pooling), ids in sorted(paired.items()):
        part = parts.get(lang)
        if part is None or layer not in [int(x) for x in part["layers"]]:
            continue
        j = [int(x) for x in part["layers"]].index(layer)
        marks, stats = [], []
        offsets = part["word_offsets"]
        for k, uid in enumerate(part["ids"]):
            if str(uid) not in ids:
                continue
            index = part["word_index"][offsets[k] : offsets[k + 1]]
            marks += [(str(uid), int(wi)) in words.get((lang, layer, pooling), set()) for wi in index]
            stats.append(word_rows(part[f"mixing_{k}"][j]))
        if not stats:
            continue
        w, marked = np.concatenate(stats), np.asarray(marks, bool)

        def mean(column, rows_, w=w):
            return float(w[rows_, column].mean()) if rows_.any() else float("nan")

        out.append(dict(lang=lang, layer=layer, pooling=pooling, aligned_words=int(marked.sum()),
                        other_words=int((~marked).sum()), self_aligned=mean(0, marked), self_other=mean(0, ~marked),
                        reach_aligned=mean(4, marked), reach_other=mean(4, ~marked)))  # fmt: skip
    return out


def parquet(table_rows: list[dict]) -> bytes:
    schema = pa.schema([("lang", pa.string()), ("layer", pa.int32()), ("pooling", pa.string()),
                        ("aligned_words", pa.int32()), ("other_words", pa.int32()),
                        *((c, pa.float64()) for c in COLUMNS[5:])])  # fmt: skip
    return parquet_bytes(pa.Table.from_pylist(table_rows, schema=schema))


def report_lines(table_rows: list[dict]) -> list[str]:
    """Per block and pooling, over the languages: the self share of aligned words against the others'."""
    lines = []
    for layer, pooling in sorted({(r["layer"], r["pooling"]) for r in table_rows}):
        at = [r for r in table_rows if (r["layer"], r["pooling"]) == (layer, pooling)]
        n = sum(r["aligned_words"] for r in at), sum(r["other_words"] for r in at)
        a = np.nanmean([r["self_aligned"] for r in at])
        o = np.nanmean([r["self_other"] for r in at])
        lines.append(f"interp layer {layer} ({pooling}): self share of aligned words {a:.3f} ({n[0]}) against the "
                     f"others' {o:.3f} ({n[1]})")  # fmt: skip
    return lines
