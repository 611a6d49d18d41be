"""The align job end to end, through its flags, on a layer store of real FLEURS clips with the packaged whisper-base.

The job runs through its flags as two ``jax.distributed`` processes (``python -m jobs.align``, subprocesses: absl flags
are process-global and other job modules define the same names), whose words must equal the one-process run's. That
run, the resumes, the decoded transcripts and the refusals call its library entry point (``run_align``, what the
flags reach; ``report()`` is what the job prints) in this process, which gets the session's whisper-base (the
aligner's ``load_whisper`` of the packaged model hands it back, ``shared_base``) instead of loading it once per call,
so its compiled programs serve every call. What it wrote is read back and compared with
``engine.models.whisper.timing.align_words`` run directly on the stored states.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pandas as pd
import pytest

from engine.errors import BabelgridError
from engine.models.whisper.encoder import WhisperEncoder
from engine.models.whisper.timing import align_words, fill_padding, silence_states
from engine.pipelines.align.config import AlignConfig, AlignError
from engine.pipelines.align.run import run_align
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.runtime.options import configure
from engine.stores.reader import open_store
from engine.stores.words import read_words
from tests.jobs.manifests import write_fleurs_manifest
from tests.jobs.multiprocess import run_processes

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

CLIPS = ("de-009", "en-000", "en-001", "es-001")  # de-009 is 43 s: two windows, the one de clip
NO_TEXT = "fleurs-en-001"  # listed without a transcription
MISSING = "fleurs-es-404"  # listed, but its file does not exist: never encoded


@pytest.fixture(scope="module")
def whisper(base_whisper):
    return base_whisper  # the packaged whisper-base, loaded once per session (tests/conftest.py)


@pytest.fixture(scope="module", autouse=True)
def shared_base(whisper):
    """The in-process align runs' aligner gets the loaded whisper-base rather than a fresh load of the same files; any
    other model (the tiny one of ``test_refusals``) is loaded as the job loads it."""
    import jax.numpy as jnp

    from engine.models.whisper import aligner

    load = aligner.load_whisper

    def loaded(source=None, **kwargs):
        return (
            whisper
            if source is None and jnp.dtype(kwargs.get("dtype", "float32")) == jnp.float32
            else load(source, **kwargs)
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(aligner, "load_whisper", loaded)
        yield


@pytest.fixture(scope="module")
def layer_store(fleurs_dir, whisper, tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("align")
    missing = dict(id=MISSING, lang="es", path=str(root / "missing.ogg"), transcription="hola")
    write_fleurs_manifest(root / "clips.jsonl", fleurs_dir, CLIPS, no_text=NO_TEXT, extra_rows=[missing])
    top = whisper.dims.n_audio_layer + 1
    out = root / "store"
    config = configure(
        EncodeConfig,
        out=str(out),
        dataset=f"manifest:{root / 'clips.jsonl'}",
        layers=(top,),
        progress=False,
        allow_unpaired=True,  # FLEURS clips of different sentences: nothing cross-lingual is measured here
    )
    summary = run_encode(config, encoder=WhisperEncoder(whisper))
    assert summary.done == len(CLIPS) and summary.n_skipped == 1, summary.report()
    return out


@pytest.fixture(scope="module")
def words_out(layer_store, tmp_path_factory) -> tuple[pathlib.Path, str]:
    """The one-process run (``--chunk 2``) into its folder, and what the job prints of it."""
    from jobs.common import finish  # the exit status the job returns (defines no flags)

    out = tmp_path_factory.mktemp("words") / "words"
    summary = align(layer_store, out, chunk=2)
    assert finish(summary) == 0  # the job's exit status without --strict, skips and all
    return out, summary.report()


def align(store: pathlib.Path, out: pathlib.Path, **settings):
    """The align job's run on ``store`` into ``out`` with ``settings`` as its flags give them; its summary
    (``report()`` is what the job prints)."""
    return run_align(configure(AlignConfig, store=str(store), out=str(out), progress=False, **settings))


def read_words_pd(out: pathlib.Path, lang: str) -> pd.DataFrame:
    return pd.read_parquet(out / lang / "words.parquet")


def test_words_equal_the_library_on_the_stored_states(layer_store, words_out, whisper):
    out, _ = words_out
    reader = open_store(str(layer_store))
    top = whisper.dims.n_audio_layer + 1
    checked = 0
    for lang in ("de", "en", "es"):
        words = read_words_pd(out, lang)
        assert list(words.columns) == [
            "utterance",
            "id",
            "recording",
            "word_index",
            "word",
            "start",
            "end",
            "probability",
        ]
        for u, row in enumerate(reader.arrays(lang).rows):
            if reader.lengths(lang)[u] < 0 or row.transcription is None:
                assert u not in set(words.utterance)
                continue
            states = reader.states(lang, u, top)
            xa = fill_padding(states[None], [len(states)], silence_states(whisper), -(-len(states) // 1500) * 1500)
            tokens = whisper.tokenizer.encode(" " + row.transcription)
            expected = align_words(whisper, xa, [len(states)], [tokens], [lang])[0]
            got = words[words.utterance == u].sort_values("word_index")
            assert list(got.word) == [w.text for w in expected]
            np.testing.assert_allclose(got.start, [w.start for w in expected], atol=1e-6)
            np.testing.assert_allclose(got.end, [w.end for w in expected], atol=1e-6)
            np.testing.assert_allclose(got.probability, [w.probability for w in expected], rtol=1e-4, atol=1e-6)
            assert (got.id == row.id).all() and list(got.word_index) == list(range(len(got)))
            checked += 1
    assert checked == len(CLIPS) - 1
    long = read_words_pd(out, "de").query("id == 'fleurs-de-009'")
    assert long.end.max() > 30.0 and (np.diff(long.start) >= 0).all()  # words past the first window, in order


def test_skips_are_listed_and_counted(words_out, layer_store, tmp_path):
    out, stdout = words_out
    table, skipped_en = read_words(str(out), "en", skipped=True)
    pd.testing.assert_frame_equal(table.to_pandas(), read_words_pd(out, "en"))
    assert skipped_en == [(1, NO_TEXT, "no_transcription")]
    skipped = {lang: pd.read_csv(out / lang / "skipped.csv") for lang in ("en", "es")}
    assert skipped["en"].to_dict("records") == [dict(utterance=1, id=NO_TEXT, reason="no_transcription")]
    assert skipped["es"].to_dict("records") == [dict(utterance=1, id=MISSING, reason="not_encoded")]
    assert "skipped 1 (no_transcription)" in stdout and "skipped 1 (not_encoded)" in stdout
    from jobs.common import finish  # the exit status the job returns (defines no flags)

    assert finish(align(layer_store, tmp_path / "w", langs=("es",)), strict=True) == 1  # --strict with a skip


def test_resume_redoes_only_missing_parts(layer_store, words_out, tmp_path):
    out, _ = words_out
    again = align(layer_store, out, chunk=2).report()
    assert "aligned 0 utterances" in again and f"{len(CLIPS)} already done" in again, again
    before = read_words_pd(out, "de")
    (out / "de" / "parts" / "00000000.parquet").unlink()  # de-009, the one de clip
    (out / "de" / "words.parquet").unlink()
    redo = align(layer_store, out, chunk=2).report()
    assert "aligned 1 utterances" in redo, redo
    pd.testing.assert_frame_equal(read_words_pd(out, "de"), before)
    # align.json records which layer store (its identity, not only its path): an align resume compares it
    from engine.stores.provenance import identity
    from engine.stores.reader import open_store
    from engine.stores.words import audio_digest

    written = json.loads((out / "align.json").read_text())
    reader = open_store(str(layer_store))
    recorded = written["layer_store_identity"]
    assert recorded == identity(reader.manifest) and recorded["created"], recorded
    # and the audio per language, which the words' readers compare with their store's
    assert written["audio"] == {lang: audio_digest(reader, lang) for lang in reader.languages}


def test_decoded_transcripts(layer_store, tmp_path):
    out = tmp_path / "decoded"
    align(layer_store, out, langs=("de",), transcripts="decode")
    words = read_words_pd(out, "de")
    w = words[words.id == "fleurs-de-009"]  # its two windows (a full one and a partial one) decoded, then joined
    assert len(w) > 10 and (np.diff(w.start) >= 0).all()
    assert w.end.max() > 30.0


def test_refusals(layer_store, words_out, whisper, tiny_model_dir, tmp_path):
    out, _ = words_out
    with pytest.raises(BabelgridError, match="median_filter_width"):
        align(layer_store, out, median_filter_width=5)
    with pytest.raises(AlignError, match="not in the layer store"):
        align(layer_store, tmp_path / "x", langs=("xx",))
    # A store written by another model.
    with pytest.raises(BabelgridError, match="pass the store's model with --model"):
        align(layer_store, tmp_path / "z", model=str(tiny_model_dir))
    # A store without the final layer cannot feed the decoder. Its one clip is en-000 (10 s, one window), not the
    # manifest's first (de-009, 43 s: two windows of whisper-base to encode for a refusal that reads none of them).
    lower = tmp_path / "lower"
    rows = [json.loads(line) for line in (layer_store.parent / "clips.jsonl").read_text().splitlines()]
    clip = next(row for row in rows if row["id"] == "fleurs-en-000")
    (tmp_path / "one.jsonl").write_text(json.dumps(clip) + "\n")
    run_encode(
        configure(
            EncodeConfig, out=str(lower), dataset=f"manifest:{tmp_path / 'one.jsonl'}", layers=(3,), progress=False
        ),
        encoder=WhisperEncoder(whisper),
    )
    with pytest.raises(BabelgridError, match="--layers all"):
        align(lower, tmp_path / "y")


def test_two_processes_give_the_same_words(layer_store, words_out, tmp_path):
    """jax.distributed with 2 local processes: parts shared through work claims, process 0 merges once all are done."""
    out = tmp_path / "two"
    args = ["--store", str(layer_store), "--out", str(out), "--chunk", "2", "--progress=false"]
    outputs = run_processes("jobs.align", args)
    aligned = [int(o.split("aligned ", 1)[1].split()[0]) for o in outputs]
    assert sum(aligned) == len(CLIPS) - 1, outputs  # each part aligned once (who takes which: claims)
    one, _ = words_out
    for lang in ("de", "en", "es"):
        pd.testing.assert_frame_equal(read_words_pd(out, lang), read_words_pd(one, lang))
        assert (out / lang / "skipped.csv").read_text() == (one / lang / "skipped.csv").read_text()
