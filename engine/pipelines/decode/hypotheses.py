"""A decode job's output, for the job and for analysts: hypothesis rows, their parts, scores, and the readers.

Layout (``OUT`` a local path or a TensorStore kvstore URL; ``engine.pipelines.decode.run`` writes it)::

    OUT/decode.json                 settings, model and --decode_as mapping of the run; a resumed run must match them
    OUT/hypotheses.parquet          one row per (utterance, layer, ln_post, task, decoding): HYPOTHESIS_SCHEMA
    OUT/scores.csv                  language, layer, ln_post, task, decoding, metric, value, n (corpus-level)
    OUT/skipped.csv                 language, id, task, reason: what was not decoded or not scored, and why
    OUT/scores-<decoding>.png       metric against layer, one line per language, one panel per (task, metric, ln_post)
    OUT/report.md                   the scores table, and sampled utterances' reference and hypothesis at every layer
    OUT/parts/<lang>/<task>-<decoding>-L<layer>-ln_<on|off>.parquet
                                    one part's rows (the unit of resume); its Parquet metadata lists the utterances
                                    it was made from and its skips
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import pyarrow as pa

from engine.errors import BabelgridError
from engine.stores import parts
from engine.stores.integrity import read_output, repair_hint
from engine.stores.kv import open_kvstore

MANIFEST = "decode.json"
HYPOTHESES = "hypotheses.parquet"
SCORES = "scores.csv"
SKIPPED = "skipped.csv"
REPORT = "report.md"
SCORE_COLUMNS = ("language", "layer", "ln_post", "task", "decoding", "metric", "value", "n")
HYPOTHESIS_SCHEMA = pa.schema(
    [
        pa.field("language", pa.string(), nullable=False),  # the store's language code
        pa.field("id", pa.string(), nullable=False),
        pa.field("recording", pa.int32(), nullable=False),
        pa.field("utterance", pa.int32(), nullable=False),  # row of the store's utterance table
        pa.field("layer", pa.int32(), nullable=False),  # encoder layer decoded from (babelgrid indexing)
        pa.field("ln_post", pa.bool_(), nullable=False),
        pa.field("task", pa.string(), nullable=False),  # transcribe | translate
        pa.field("decoding", pa.string(), nullable=False),  # greedy | beam:N
        pa.field("language_token", pa.string(), nullable=False),  # Whisper code in the prompt (forced or detected)
        pa.field("hypothesis", pa.string(), nullable=False),  # the windows' texts joined; may be empty
        pa.field("reference", pa.string(), nullable=True),  # None: no reference (the row is not scored)
        pa.field("avg_logprob", pa.float32(), nullable=False),  # mean over windows of Whisper's avg_logprob
        pa.field("compression_ratio", pa.float32(), nullable=False),  # gzip, as Whisper computes it
        pa.field("n_tokens", pa.int32(), nullable=False),  # text tokens, all windows
    ]
)


class HypothesesError(BabelgridError, ValueError):
    """A decode job's output is missing or incomplete."""


def part_key(lang: str, task: str, decoding: str, layer: int, ln_post: bool) -> str:
    return f"parts/{lang}/{task}-{decoding.replace(':', '')}-L{layer:02d}-ln_{'on' if ln_post else 'off'}.parquet"


def part_bytes(rows: dict, done: Sequence[int], skipped: Sequence[tuple[str, str, str]]) -> bytes:
    """One part of the hypotheses (``engine.stores.parts``)."""
    return parts.part_bytes(rows, HYPOTHESIS_SCHEMA, done, skipped)


def read_hypotheses(out: str) -> pa.Table:
    """A decode job's ``hypotheses.parquet`` as a pyarrow Table (``.to_pandas()`` for a DataFrame)."""
    _, kv = open_kvstore(out)
    found = kv.read(HYPOTHESES).result()
    if found.state != "value":
        raise HypothesesError(
            f"no {HYPOTHESES} under {out!r}: run jobs.decode there (it writes it when a run completes)"
        )
    return parts.read_table(found.value, HYPOTHESES, out, "decode")


def read_scores(out: str) -> list[dict]:
    """A decode job's ``scores.csv`` rows as dicts (value a float, n an int)."""
    _, kv = open_kvstore(out)
    data = read_output(kv, SCORES, out, fix=repair_hint(out, "decode"))
    if data is None:
        raise HypothesesError(f"no {SCORES} under {out!r}: run jobs.decode there (it writes it when a run completes)")
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    for row in rows:
        row["layer"], row["value"], row["n"] = int(row["layer"]), float(row["value"]), int(row["n"])
    return rows
