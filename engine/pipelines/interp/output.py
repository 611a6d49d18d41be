"""An interp run's output format: the layout of ``OUT``, the settings a resumed run must match, the pairs' schema and
the (language pair, layer) part files (``engine.pipelines.interp.run`` writes them, ``.reader`` reads them)."""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa

from engine.pipelines.interp.config import InterpConfig
from engine.stores.kv import read_value
from engine.stores.parts import read_table, table_bytes

FORMAT_NAME = "babelgrid-interp"
FORMAT_VERSION = 3  # 2: alignment (mutual | ot) and the columns mutual, ot_link, mass, share; 3: standardise
MANIFEST = "interp.json"
SUMMARY = "summary.csv"
PAIRS = "pairs.parquet"
PAIR_SEPARATOR = "__"
PAIRS_META = b"babelgrid_pairs"  # a part's Parquet metadata: the utterance pairs it was made from
MANIFEST_FIELDS = (
    "format",
    "version",
    "words",
    "poolings",
    "threshold",
    "retrieved",
    "measure",
    "text_encoder",
    "seed",
    "alignment",
    "ot",
    "standardise",
)
PAIR_COLUMNS = (
    "id_a", "id_b", "rank", "layer", "pooling", "word_index_a", "word_a", "word_index_b", "word_b", "cosine",
    "text_similarity", "phone_distance", "word_index_random", "word_random", "cosine_random",
    "text_similarity_random", "phone_distance_random", "phones_a", "phones_b", "mutual", "ot_link", "mass", "share",
)  # fmt: skip
SUMMARY_COLUMNS = (
    "lang_a", "lang_b", "layer", "pooling", "n_utterance_pairs", "n_word_pairs", "text_sim_matched",
    "text_sim_random", "t", "p", "phone_dist_matched", "phone_dist_random", "t_phone", "p_phone", "alignment",
    "n_mutual", "n_one_to_many", "n_ot_only", "n_mutual_only", "text_sim_ot_only", "text_sim_mutual",
    "phone_dist_ot_only", "phone_dist_mutual",
)  # fmt: skip
PAIR_SCHEMA = pa.schema(
    [
        ("id_a", pa.string()), ("id_b", pa.string()), ("rank", pa.int32()), ("layer", pa.int32()),
        ("pooling", pa.string()), ("word_index_a", pa.int32()), ("word_a", pa.string()),
        ("word_index_b", pa.int32()), ("word_b", pa.string()), ("cosine", pa.float32()),
        ("text_similarity", pa.float32()), ("phone_distance", pa.float32()), ("word_index_random", pa.int32()),
        ("word_random", pa.string()), ("cosine_random", pa.float32()), ("text_similarity_random", pa.float32()),
        ("phone_distance_random", pa.float32()), ("phones_a", pa.string()), ("phones_b", pa.string()),
        ("mutual", pa.bool_()), ("ot_link", pa.bool_()), ("mass", pa.float32()), ("share", pa.float32()),
    ]
)  # fmt: skip


def manifest(config: InterpConfig) -> dict:
    """``OUT/interp.json``: the settings of the run (a resumed run must match ``MANIFEST_FIELDS``)."""
    return dict(
        format=FORMAT_NAME,
        version=FORMAT_VERSION,
        store=config.store,
        words=config.words,
        poolings=list(config.poolings),
        threshold=config.threshold,
        retrieved=config.retrieved,
        measure=config.measure if config.retrieved else None,
        text_encoder=config.text_encoder,
        seed=config.seed,
        alignment=config.alignment,
        ot=dict(dataclasses.asdict(config.ot), weights=config.ot_weights, mass=config.ot_mass)
        if config.alignment == "ot"
        else None,
        standardise=config.standardise,
    )


def pair_name(lang_a: str, lang_b: str) -> str:
    """The folder of a language pair's outputs: ``<a>__<b>``."""
    return f"{lang_a}{PAIR_SEPARATOR}{lang_b}"


def part_key(lang_a: str, lang_b: str, layer: int) -> str:
    """The part of one (language pair, layer): the unit of work and of resume."""
    return f"{pair_name(lang_a, lang_b)}/parts/layer{layer:02d}.parquet"


def empty_rows() -> dict[str, list]:
    return {c: [] for c in PAIR_COLUMNS}


def part_bytes(rows: dict, pairs: list) -> bytes:
    """A part: ``rows`` (PAIR_COLUMNS -> values) as Parquet, its metadata naming the utterance ``pairs``
    ([id_a, id_b, rank]) it was made from."""
    table = pa.Table.from_pydict(rows, schema=PAIR_SCHEMA)
    return table_bytes(table.replace_schema_metadata({PAIRS_META: json.dumps(pairs)}))


def read_part(kv, key: str, url: str, pairs: list) -> pa.Table | None:
    """The stored part, or None when missing or made from other utterance pairs."""
    found = read_value(kv, key, url)
    if found.state != "value":
        return None
    table = read_table(found.value, key, url, "interp")
    meta = (table.schema.metadata or {}).get(PAIRS_META)
    if meta is None or json.loads(meta) != [list(p) for p in pairs]:
        return None
    return table
