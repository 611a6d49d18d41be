"""Which files of an output folder babelgrid wrote: verify judges those, and leaves every other file alone.

Users keep notes, plots, tables and datasets beside (or inside) babelgrid's outputs. ``verify`` must never call
them damaged and ``--repair`` must never delete them, so a file is judged only when the output's own record shows
that babelgrid wrote it, never by its extension alone:

- **its digest file**: ``write_outputs`` writes ``<key>.sha256`` before ``<key>`` (``engine.stores.integrity``), so
  every output file babelgrid wrote has one whose line names it;
- **its own seal**: a Parquet file whose footer declares its columns under ``babelgrid.columns``
  (``parquet_bytes``), a JSON object carrying babelgrid's ``digest`` field (``records.json_bytes``);
- **the output layout**: the names ``docs/outputs.md`` documents (``OUTPUT_NAMES``), for a babelgrid file whose seal
  or digest file was lost (a deleted ``.sha256``, a truncated Parquet footer): named as damage, since its job reads
  it at that key;
- **a checkpoint's manifest**: an orbax checkpoint folder ``.../checkpoints/<step>/`` is judged by its
  ``checksums.json`` (``engine.stores.checkpoint_manifest``), as the job's own restore judges it; orbax's files
  inside it (``commit_success.txt``, its index) are never judged one by one;
- **run coordination and array metadata**: the lease, claims, worker records, study run records (``RUN_NAMES``)
  and TensorStore's ``zarr.json`` and chunk keys, which the store checks read.

Anything else is "not ours": listed in one note and left alone.
"""

from __future__ import annotations

import re

# The files docs/outputs.md documents, at any depth (a language's folder, a pair's, a layer's). Names only babelgrid
# gives: a user's `notes.txt`, `README.md`, `mine.png` or `mine.csv` matches none.
_CSV = (
    "retrieval|summary|skipped|asymmetry|baseline_delta|by_depth|cca|challenge_table|early_exit|intervention"
    "|intervention_test|languages|lid|meet|metrics|neurons_alignment|probe|relations|samediff|scores"
    "|selective_features|selective_heads|selective_units|split|subset_comparison|typology|outliers|dimensions"
    "|centred|cka|best"  # the series job's (retrieval, lid and meet are named above)
)
_PARQUET = (
    "utterances|words|hypotheses|pairs|heads|units|features|layer_similarity|early_exit|parts/[^/]+"
    r"|parts/[^/]+/(?:transcribe|translate)-[a-z0-9]+-L\d+-ln_(?:on|off)"  # decode's parts/<lang>/<task>-...
)
OUTPUT_NAMES = re.compile(
    rf"""(?x)^(?:.*/)?(?:
      (?:{_CSV})\.csv
    | [a-z][a-z0-9-]*__[a-z][a-z0-9-]*\.csv        # challenge: one table per pair
    | matrices/[^/]+\.csv                           # typology's distance matrices
    | matrices/[^/]+\.npz | (?:mixing|interp)\.parquet  # mixing's matrices and tables
    | figures/[^/]+\.png
    | (?:loss|bleu|text_similarity|phone_distance|scores-[^/]+)\.png
    | report\.md
    | (?:srt|vtt)/[^/]+\.(?:srt|vtt)               # align's captions
    | (?:parts|counts|intervention/pooled|language_transform|dimension_transform)/[^/]+\.npz
    | (?:{_PARQUET})\.parquet
    | activations/layer-\d+/[^/]+\.safetensors
    | layer-\d+/sae_weights\.safetensors
    | (?:json/[^/]+|challenge|decode|interp|align|neurons_alignment|pairs|ids|languages|manifest|retrieval)\.json
    | intervention/settings\.json
    | (?:languages|done)/[^/]+\.json
    )$"""
)
# JSON files babelgrid writes without its digest field: run coordination, array metadata, and the files other tools
# read as they are (Hugging Face model and tokenizer configs, SAELens's cfg.json).
RUN_NAMES = re.compile(
    r"""(?x)^(?:.*/)?(?:
      lease\.json | zarr\.json | run\.json
    | (?:claims|workers|runs)/.+\.json
    | config\.json | generation_config\.json | tokenizer(?:_config)?\.json | preprocessor_config\.json
    | special_tokens_map\.json | vocab\.json | cfg\.json | babelgrid_finetuned_from\.json
    )$"""
)
# A TensorStore chunk key (zarr v3's default encoding, "c/0/1" or "c.0.1"): read by the store checks, never here.
CHUNK = re.compile(r"(?:^|/)c(?:[./]\d+)+$")
CHECKPOINT = re.compile(r"^(?P<folder>(?:.*/)?checkpoints/(?P<step>\d+)(?P<tail>\.partial|\.damaged)?)/.+$")


def documented(key: str) -> bool:
    """Whether ``key`` is a name babelgrid's jobs write (``OUTPUT_NAMES``)."""
    return OUTPUT_NAMES.match(key) is not None


def coordination(key: str) -> bool:
    """Whether ``key`` is a lease, claim, record or array metadata file (``RUN_NAMES``) or a chunk key."""
    return RUN_NAMES.match(key) is not None or CHUNK.search(key) is not None


def checkpoint_folder(key: str) -> tuple[str, bool] | None:
    """``(folder, complete)`` when ``key`` lies in a checkpoint folder (``.../checkpoints/<step>[.partial]/...``):
    ``complete`` for a ``<step>`` folder, which its ``checksums.json`` judges; False for a save in progress or one
    moved aside, which the job's next start removes. None for any other key."""
    found = CHECKPOINT.match(key)
    if found is None:
        return None
    return found.group("folder"), found.group("tail") is None
