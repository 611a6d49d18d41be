"""The mixing job (value zeroing) end to end on a tiny random Whisper (2 blocks x 4 heads, tests/conftest.py).

The kernel is checked against the reference code in tests/models/test_value_zeroing.py; here the job's wiring: two
languages of two synthetic clips each, encoded by the encode job, words written as the align job writes them (one
punctuation-only word, one without times, one utterance with a single word: skipped). Checked:

- word spans: the reference's ``get_encoder_word_boundaries`` (ceil of seconds x 1500 frames / 30 s), inclusive;
- one utterance's matrices: recomputed from its audio through the model's encoder with each word's value vectors
  zeroed by a NumPy twin of the attention's value step (the block written out in NumPy from the model's weights);
- the table: a plain loop over the matrices;
- resume (nothing recomputed), other settings refused, and a family that cannot re-run a block refused in one line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile

from engine.data.audio import load_audio
from engine.models.whisper.features import features_for_audio
from engine.pipelines.mixing import run as mixing_run
from engine.pipelines.mixing.config import MixingConfig, MixingError
from engine.runtime.options import configure
from engine.stores.integrity import parquet_bytes
from engine.stores.words import WORD_SCHEMA

WORDS = {  # (lang, id) -> [(word, start, end)] in seconds
    ("en", "u0"): [(" one,", 0.05, 0.42), (" two", 0.42, 0.83), (" ...", 0.83, 0.9), (" three.", 0.9, 1.37)],
    ("en", "u1"): [(" four", 0.0, 0.6), (" five", math.nan, math.nan), (" six", 0.61, 1.1)],
    ("de", "u0"): [(" eins", 0.1, 0.5), (" zwei", 0.5, 0.97), (" drei", 1.0, 1.5)],
    ("de", "u1"): [(" vier", 0.2, 1.0)],  # one word: nothing to mix
}


@pytest.fixture(scope="module")
def inputs(tiny_whisper, tiny_model_dir, tmp_path_factory):
    from engine.models.whisper.encoder import WhisperEncoder
    from engine.pipelines.encode.config import EncodeConfig
    from engine.pipelines.encode.run import run_encode

    root = tmp_path_factory.mktemp("mixing")
    rng = np.random.default_rng(0)
    lines = []
    for lang, uid in WORDS:
        t = np.arange(int(16000 * 1.6)) / 16000
        wave = 0.2 * np.sin(2 * np.pi * (200 + 300 * rng.random()) * t) * (
            1 + np.sin(7 * t)
        ) + 0.02 * rng.standard_normal(len(t))
        path = root / f"{lang}-{uid}.wav"
        soundfile.write(path, wave.astype(np.float32), 16000)
        lines.append(json.dumps(dict(id=uid, lang=lang, path=str(path), transcription="x")))
    (root / "clips.jsonl").write_text("\n".join(lines) + "\n")
    store = root / "store"
    clips = f"manifest:{root / 'clips.jsonl'}"
    config = configure(EncodeConfig, out=str(store), model=str(tiny_model_dir), dataset=clips, progress=False)
    run_encode(config, encoder=WhisperEncoder(tiny_whisper))
    words = root / "words"
    for lang in ("en", "de"):
        rows = {f.name: [] for f in WORD_SCHEMA}
        for (la, uid), ws in WORDS.items():
            if la != lang:
                continue
            for w, (word, s, e) in enumerate(ws):
                for key, value in dict(utterance=int(uid[1:]), id=uid, recording=0, word_index=w, word=word, start=s,
                                       end=e, probability=0.9).items():  # fmt: skip
                    rows[key].append(value)
        (words / lang).mkdir(parents=True)
        pq.write_table(pa.Table.from_pydict(rows, schema=WORD_SCHEMA), words / lang / "words.parquet")
    interp = root / "interp" / "en__de"  # as the interp job writes it: only the columns the tie-in reads matter here
    interp.mkdir(parents=True)
    pairs = {"id_a": ["u0", "u0", "u0", "u1"], "id_b": ["u0", "u0", "u0", "u0"], "rank": [0, 0, 0, 1],
             "layer": [1, 1, 2, 1], "pooling": ["mean"] * 4, "word_index_a": [0, 1, 3, 0],
             "word_index_b": [1, 2, 0, 0], "mutual": [True, False, True, True]}  # fmt: skip
    (interp / "pairs.parquet").write_bytes(parquet_bytes(pa.Table.from_pydict(pairs)))
    return root, store, words


def _config(root, store, words, tiny_model_dir, out="out", **kw):
    return configure(MixingConfig, store=str(store), words=str(words), model=str(tiny_model_dir),
                     out=str(root / out), progress=False, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def encoder(tiny_whisper):
    """The tiny model's encoder, one object for the module (its jitted value-zeroing calls compiled once)."""
    from engine.models.whisper.encoder import WhisperEncoder

    return WhisperEncoder(tiny_whisper)


@pytest.fixture(scope="module")
def job(inputs, tiny_model_dir, encoder):
    root, store, words = inputs
    with pytest.MonkeyPatch.context() as mp:  # the store's model (its sha256 is checked), loaded once for the module
        mp.setattr(mixing_run, "load_encoder", lambda *a, **k: encoder)
        summary = mixing_run.run_mixing(
            _config(root, store, words, tiny_model_dir, chunk=2, interp=str(root / "interp"))
        )
    return root / "out", summary


def _part(out, lang):
    with np.load(out / "matrices" / f"{lang}.npz", allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def _zeroed_block_twin(model, layer, x, zero):
    """NumPy float64 twin of Whisper's encoder block (OpenAI's ResidualAttentionBlock) with the value vectors of the
    frames ``zero`` set to 0, every head; ``ln_post`` after the last block."""
    enc = model.model.encoder
    blk = enc.blocks[layer - 1]

    def ln(v, m):
        mu, var = v.mean(-1, keepdims=True), v.var(-1, keepdims=True)
        return (v - mu) / np.sqrt(var + 1e-5) * np.asarray(m.scale[...], np.float64) + np.asarray(
            m.bias[...], np.float64
        )

    def lin(v, m):
        out = v @ np.asarray(m.kernel[...], np.float64)
        return out + np.asarray(m.bias[...], np.float64) if m.bias is not None else out

    from scipy.special import erf

    h = ln(x, blk.attn_ln)
    a = blk.attn
    q, k, v = lin(h, a.query), lin(h, a.key), lin(h, a.value)
    v[zero] = 0.0
    n, d = x.shape
    heads = a.n_head
    dh = d // heads
    out = np.zeros_like(x)
    for i in range(heads):
        s = slice(i * dh, (i + 1) * dh)
        logits = q[:, s] @ k[:, s].T / np.sqrt(dh)
        p = np.exp(logits - logits.max(1, keepdims=True))
        out[:, s] = (p / p.sum(1, keepdims=True)) @ v[:, s]
    x = x + lin(out, a.out)
    h = lin(ln(x, blk.mlp_ln), blk.mlp_in)
    x = x + lin(0.5 * h * (1 + erf(h / np.sqrt(2))), blk.mlp_out)
    return ln(x, enc.ln_post) if layer == model.dims.n_audio_layer else x


def test_matrices_spans_and_skips(job, inputs, tiny_whisper, encoder):
    out, summary = job
    root = inputs[0]
    assert summary.utterances == 3 and summary.parts == 2
    assert "skipped 1 (fewer_than_two_words): de/u1" in summary.report()
    en = _part(out, "en")
    assert list(en["ids"]) == ["u0", "u1"] and list(en["layers"]) == [1, 2]
    assert list(en["words"]) == ["one,", "two", "three.", "four", "six"]  # punctuation alone and untimed words dropped
    assert list(en["word_index"]) == [0, 1, 3, 0, 2]
    # the reference's spans: ceil(1500 * t / 30), inclusive
    want = [(math.ceil(1500 * s / 30), math.ceil(1500 * e / 30)) for s, e in zip(en["starts"], en["ends"], strict=True)]
    np.testing.assert_array_equal(en["spans"], want)
    # u0's matrices from its audio: the block's input by the model's own full pass, the zeroed block by a NumPy twin
    mel, _ = features_for_audio(load_audio(root / "en-u0.wav"), tiny_whisper.dims.n_mels)
    states = np.asarray(encoder.value_zeroing.layers((mel,)), np.float64)[:, 0]  # the model's own pass, 0..L
    spans = en["spans"][:3]
    for j, layer in enumerate((1, 2)):
        x = states[layer - 1]
        original = _zeroed_block_twin(tiny_whisper, layer, x.copy(), np.zeros(len(x), bool))
        raw = np.zeros((3, 3))
        for t, (s, e) in enumerate(spans):
            zero = np.zeros(len(x), bool)
            zero[s : e + 1] = True
            y = _zeroed_block_twin(tiny_whisper, layer, x.copy(), zero)
            cos = (y * original).sum(1) / np.linalg.norm(y, axis=1) / np.linalg.norm(original, axis=1)
            for i, (si, ei) in enumerate(spans):
                raw[i, t] = (1 - cos[si : ei + 1]).mean()
        np.testing.assert_allclose(en["mixing_0"][j], raw / raw.sum(1, keepdims=True), atol=2e-4)
    assert en["mixing_0"].shape == (2, 3, 3) and en["mixing_1"].shape == (2, 2, 2)


def test_table_is_a_loop_over_the_matrices(job):
    out, _ = job
    table = pq.read_table(out / "mixing.parquet").to_pandas()
    assert sorted(zip(table["lang"], table["layer"], strict=True)) == [("de", 1), ("de", 2), ("en", 1), ("en", 2)]
    for lang in ("en", "de"):
        part = _part(out, lang)
        for j, layer in enumerate(part["layers"]):
            self_, d1, reach = [], [], []
            for k in range(len(part["ids"])):
                m = part[f"mixing_{k}"][j]
                for i in range(len(m)):
                    self_.append(m[i, i])
                    d1.append(sum(m[i, t] for t in range(len(m)) if abs(i - t) == 1))
                    reach.append(sum(m[i, t] * abs(i - t) for t in range(len(m))))
            row = table[(table["lang"] == lang) & (table["layer"] == layer)].iloc[0]
            assert row["words"] == len(self_)
            np.testing.assert_allclose([row["self_share"], row["share_d1"], row["word_distance"]],
                                       [np.mean(self_), np.mean(d1), np.mean(reach)], rtol=1e-6)  # fmt: skip
            assert row["context_share"] == pytest.approx(1 - row["self_share"])
    assert (out / "figures" / "mixing.png").stat().st_size > 10_000


def test_resume_and_refusals(job, inputs, tiny_model_dir, encoder, monkeypatch):
    out, _ = job
    root, store, words = inputs
    monkeypatch.setattr(mixing_run, "load_encoder", lambda *a, **k: encoder)  # the store's model, loaded once
    again = mixing_run.run_mixing(_config(root, store, words, tiny_model_dir, chunk=5, interp=str(root / "interp")))
    # chunk: how, not what
    assert again.parts == 0 and again.utterances == 3
    with pytest.raises(MixingError, match="aggregate"):
        mixing_run.run_mixing(_config(root, store, words, tiny_model_dir, aggregate="max", interp=str(root / "interp")))
    with pytest.raises(MixingError, match="holds no <a>__<b>/pairs.parquet"):
        mixing_run.run_mixing(_config(root, store, words, tiny_model_dir, out="other", interp=str(words)))
    with pytest.raises(MixingError, match=r"--layers \[3\] are not blocks"):
        mixing_run.run_mixing(_config(root, store, words, tiny_model_dir, out="other", layers=(3,)))
    fake = types.SimpleNamespace(sha256=encoder.sha256, family=encoder.family, name="conformer-x", value_zeroing=None)
    monkeypatch.setattr(mixing_run, "load_encoder", lambda *a, **k: fake)
    with pytest.raises(MixingError, match="cannot re-run one block from its input"):
        mixing_run.run_mixing(_config(root, store, words, tiny_model_dir, out="other"))


def test_words_aligned_again_or_from_another_store_are_refused(job, inputs, tiny_model_dir, encoder, monkeypatch,
                                                                 tmp_path):  # fmt: skip
    """A probe aligned the words again (other transcripts) into the --words folder and reran: "nothing left to do",
    the old words kept. Words of another store's ids were skipped one by one as having too few words, exit 0."""
    import shutil

    root, store, words = inputs
    monkeypatch.setattr(mixing_run, "load_encoder", lambda *a, **k: encoder)
    moved = tmp_path / "words"
    shutil.copytree(words, moved)
    config = _config(root, store, moved, tiny_model_dir)
    config = dataclasses.replace(config, run=dataclasses.replace(config.run, out=str(tmp_path / "out")))
    assert mixing_run.run_mixing(config).parts == 2
    table = pq.read_table(moved / "de" / "words.parquet").to_pydict()
    table["end"] = [e + 0.01 for e in table["end"]]  # aligned again: other times
    pq.write_table(pa.Table.from_pydict(table, schema=WORD_SCHEMA), moved / "de" / "words.parquet")
    with pytest.raises(MixingError, match=r"other inputs than this run's: utterances_and_words\.de: store has "):
        mixing_run.run_mixing(config)
    table["id"] = [f"x{i}" for i in range(len(table["id"]))]
    pq.write_table(pa.Table.from_pydict(table, schema=WORD_SCHEMA), moved / "de" / "words.parquet")
    with pytest.raises(MixingError, match=r"no utterance of de in the layer store has words in --words .*another"):
        mixing_run.run_mixing(_config(root, store, moved, tiny_model_dir, out="fresh"))
    # Words aligned on other clips under the same ids: a probe's mixing applied one clip's words and times to
    # another clip. align.json records the audio per language (id, recording, duration), which mixing, interp and
    # probes compare with their store's: another model's store of the same clips passes (interp's cross-family use).
    from engine.stores.reader import open_store
    from engine.stores.words import audio_digest

    table["id"] = [f"u{int(u)}" for u in table["utterance"]]  # the store's ids again
    pq.write_table(pa.Table.from_pydict(table, schema=WORD_SCHEMA), moved / "de" / "words.parquet")
    reader = open_store(str(store))
    audio = {lang: audio_digest(reader, lang) for lang in reader.languages}
    (moved / "align.json").write_text(json.dumps({"audio": {**audio, "de": "0" * 64}}))
    with pytest.raises(MixingError, match=r"the words at .* of 'de' were aligned on other audio than the layer store"):
        mixing_run.run_mixing(_config(root, store, moved, tiny_model_dir, out="fresh"))
    assert not (root / "fresh").exists()


def test_plan_counts_what_the_run_does(job, inputs, tiny_model_dir, encoder, monkeypatch):
    from engine.pipelines.mixing.plan import plan_mixing_run

    root, store, words = inputs
    monkeypatch.setattr(mixing_run, "load_encoder", lambda *a, **k: encoder)
    plan = plan_mixing_run(_config(root, store, words, tiny_model_dir, out="planned", chunk=2), None)
    text = plan.render()
    assert "utterances: 3 (1 of those looked at skipped" in text and "words: 8" in text
    # per block: en/u0 3 words -> 2 calls, en/u1 2 -> 1, de/u0 3 -> 2; 2 blocks; 3 rows (2 masks + unchanged) a call
    assert "block calls: 10 of 3 rows x 1500 frames" in text
    zeroed = next(s for s in plan.stages if s.name == "zeroed blocks")
    assert zeroed.flops == 10 * 3 * encoder.cost(16000).layer
    assert not (root / "planned").exists()  # a plan writes nothing


def test_the_analysis_page_cell_reads_the_folder(job, monkeypatch, capsys):
    """docs/analysis.md's mixing cell, as written, on this run's folder (in this process: its imports are loaded)."""
    from tests.test_docs import analysis_cells

    out, _ = job
    cells = analysis_cells()
    monkeypatch.setenv("BABELGRID_MIXING", str(out))
    exec(compile(cells["Loading with checks"] + cells["mixing"], "docs/analysis.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "de/u0, block 2:" in printed and "zwei" in printed  # the first language of the table


def test_interp_tie_in_splits_the_words_interp_matched(job):
    """Mutual-best parallel pairs (rank 0) at a layer mark their words on both sides; rank 1 and non-mutual rows do
    not; only the utterances interp paired count (en/u1 appears only at rank 1)."""
    out, summary = job
    table = pq.read_table(out / "interp.parquet").to_pandas().set_index(["lang", "layer"])
    en, de = _part(out, "en"), _part(out, "de")
    # en/u0 at layer 1: word_index 0 aligned (mutual), 1 and 3 not; layer 2: word_index 3 aligned
    cases = (("en", en, 1, [True, False, False]), ("en", en, 2, [False, False, True]),
             ("de", de, 1, [False, True, False]), ("de", de, 2, [True, False, False]))  # fmt: skip
    for lang, part, layer, marked in cases:
        m = part["mixing_0"][layer - 1]
        row = table.loc[(lang, layer)]
        assert (row["aligned_words"], row["other_words"]) == (sum(marked), 3 - sum(marked))
        self_share = np.diagonal(m)
        assert row["self_aligned"] == pytest.approx(self_share[marked].mean())
        assert row["self_other"] == pytest.approx(self_share[~np.asarray(marked)].mean())
    assert any(line.startswith("interp layer 1 (mean): self share of aligned words") for line in summary.lines)


def test_verify_knows_every_file_of_the_folder(job):
    """Each file the run wrote with a digest is a name verify judges without one (``ownership.OUTPUT_NAMES``)."""
    from engine.pipelines.verify.ownership import documented

    out, _ = job
    keys = [str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()]
    digested = [k[: -len(".sha256")] for k in keys if k.endswith(".sha256")]
    assert {"mixing.parquet", "interp.parquet", "matrices/en.npz", "figures/mixing.png"} <= set(digested)
    assert all(documented(k) for k in digested), [k for k in digested if not documented(k)]
