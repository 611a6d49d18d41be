"""The heads job end to end, each number recomputed by code we did not write or by an independent twin.

A tiny random Whisper (2 blocks x 4 heads, the HF folder of tests/conftest.py) over three "languages" of real FLEURS
clips (de, en, es: 5 each, ids shared by position, one clip over 30 s so that an utterance spans two windows):

- one ablation's pooled states and SeqSim R@1: each utterance encoded alone by the model with that head's mask
  (``encoder(..., head_mask=)``, checked against transformers with hooks in tests/models/whisper/test_head_mask.py),
  SeqSim by a NumPy twin in float64, R@1 by the retrieval kernels' loop twin (``reference_retrieval_metrics``);
- the unablated decode: the decode job's own hypotheses from the same store and layer; WER/CER by jiwer through
  ``engine.text.metrics`` on the hypotheses the job kept;
- language ID before any ablation: the probes job's ``lid_layer`` (checked against scikit-learn elsewhere);
- gradient importance, both losses: the gradient summed over the utterances equals torch autograd of the same loss
  through transformers' WhisperForConditionalGeneration with pre-hooks on every ``out_proj`` (the mask as a tensor);
- resume (parts read back, a deleted part redone alone, a damaged part named), refusals, and a wav2vec2 store.
"""

from __future__ import annotations

import pathlib
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from engine.data.audio import load_audio
from engine.errors import BabelgridError
from engine.models.whisper import cost as whisper_cost
from engine.models.whisper.dims import ModelDimensions
from engine.models.whisper.features import features_for_audio
from engine.pipelines.heads.config import HeadsConfig, HeadsError
from engine.pipelines.heads.plan import plan_heads_run
from engine.pipelines.heads.run import run_heads
from engine.pipelines.stages.lid import lid_layer
from engine.runtime.devices import get_device
from engine.runtime.options import configure
from engine.stores.reader import open_store
from kernels.metrics import reference_retrieval_metrics

LANGS = ("de", "en", "es")
PER_LANG = 5
LONG = ("en", 1)  # (language, position) of the clip replaced by two clips joined: over 30 s


@pytest.fixture(scope="module")
def clips(fleurs_dir, tmp_path_factory) -> pathlib.Path:
    import soundfile

    root = tmp_path_factory.mktemp("heads-clips")
    for lang in LANGS:
        (root / lang).mkdir()
        for i in range(PER_LANG):
            (root / lang / f"s{i}.txt").symlink_to(fleurs_dir / f"fleurs-{lang}-{i:03d}.txt")
            if (lang, i) == LONG:
                audio = np.concatenate([load_audio(fleurs_dir / f"fleurs-{lang}-{k:03d}.ogg") for k in range(3)])
                soundfile.write(root / lang / f"s{i}.wav", audio[: 16000 * 34], 16000)
            else:
                (root / lang / f"s{i}.ogg").symlink_to(fleurs_dir / f"fleurs-{lang}-{i:03d}.ogg")
    return root


@pytest.fixture(scope="module")
def store(clips, tiny_model_dir, tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("heads-store") / "store"
    _encode(tiny_model_dir, clips, out)
    return out


def _encode(model, clips, out) -> None:
    """The encode job in this process (its command line is tested elsewhere)."""
    from engine.pipelines.encode.config import EncodeConfig
    from engine.pipelines.encode.run import run_encode

    run_encode(configure(EncodeConfig, out=str(out), model=str(model), dataset=f"folder:{clips}", progress=False))


def _config(out, store, model, **kw):
    kw = {"utterances": PER_LANG, "batch_size": 4, "max_new_tokens": 8, "progress": False, **kw}
    return configure(HeadsConfig, out=str(out), store=str(store), model=str(model), **kw)


@pytest.fixture(scope="module")
def job(store, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("heads-out") / "heads"
    summary = run_heads(_config(out, store, tiny_model_dir))
    return out, summary, pq.read_table(out / "heads.parquet").to_pandas()


def _part(out, name):
    with np.load(out / "parts" / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


def _utterances(clips):
    return [(lang, i, clips / lang / (f"s{i}.wav" if (lang, i) == LONG else f"s{i}.ogg"))
            for lang in LANGS for i in range(PER_LANG)]  # fmt: skip


def _alone(tiny_whisper, clips, mask, layer):
    """Per utterance, its valid frames at ``layer`` (windows concatenated), each window encoded alone."""
    import jax.numpy as jnp

    out = []
    for _, _, path in _utterances(clips):
        mel, valid = features_for_audio(load_audio(path), tiny_whisper.dims.n_mels)
        states = np.asarray(tiny_whisper.model.encoder(jnp.asarray(mel), (layer,), head_mask=mask))[0]
        out.append(np.concatenate([states[w, : int(n)] for w, n in enumerate(valid)]))
    return out


def _seqsim_twin(a, b) -> float:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    c = np.asarray(a, np.float64) @ np.asarray(b, np.float64).T
    return 0.5 * (c.max(axis=1).mean() + c.max(axis=0).mean())


def test_one_ablation_recomputed(job, clips, tiny_whisper):
    out, summary, table = job
    assert summary.utterances == len(LANGS) * PER_LANG and summary.windows == summary.utterances + 1
    mask = np.ones((2, 4), np.float32)
    mask[1, 2] = 0  # block 2, head 2
    part = _part(out, "block2")
    np.testing.assert_array_equal(part["masks"][2], mask)
    frames = _alone(tiny_whisper, clips, mask, 3)
    pooled = np.stack([f.mean(axis=0) for f in frames])
    got = part["pooled"][2, 1]  # head 2, the second scored layer (3 = ln_post)
    np.testing.assert_allclose(got, pooled, atol=1e-5 * np.abs(pooled).max(), rtol=0)
    label = np.repeat(np.arange(len(LANGS)), PER_LANG)
    sims = np.full((len(frames), len(frames)), np.nan)  # R@1 reads the pairs across languages only
    for a in range(len(frames)):
        for b in range(a):  # the twin is symmetric in its two utterances: each pair once
            if label[a] != label[b]:
                sims[a, b] = sims[b, a] = _seqsim_twin(frames[a], frames[b])
    ids = [f"s{i}" for _ in LANGS for i in range(PER_LANG)]
    rows = table[(table.metric == "r1") & (table.layer == 2) & (table["head"] == 2) & (table.scored_layer == 3)]
    for a, la in enumerate(LANGS):
        for b, lb in enumerate(LANGS):
            if a != b:
                ra, rb = np.flatnonzero(label == a), np.flatnonzero(label == b)
                want = reference_retrieval_metrics(sims[np.ix_(ra, rb)], [ids[i] for i in ra], [ids[i] for i in rb])
                (value,) = rows[rows.pair == f"{la}->{lb}"].value
                assert value == pytest.approx(want.recall[1]), (la, lb)


def test_attention_sinks_from_the_attention_part(job):
    """sinks.csv and heads.parquet's attention_sink / attention_first rows, recomputed from the attention part's
    per-window arrays by a loop twin (Counter, not np.unique); the arrays themselves are the model's sinks, checked
    against transformers' attention weights in tests/models/whisper/test_head_mask.py."""
    import collections

    import pandas as pd

    out, summary, table = job
    part = _part(out, "attention")
    k = HeadsConfig.sink_frames
    blocks, heads = part["stats"].shape[1:3]
    assert part["top_share"].shape == (summary.windows, blocks, heads + 1, k)
    windows_of = [2 if (lang, i) == LONG else 1 for lang in LANGS for i in range(PER_LANG)]
    lang_of_window = np.repeat(np.repeat(np.arange(len(LANGS)), PER_LANG), windows_of)
    sinks = pd.read_csv(out / "sinks.csv", keep_default_na=False, na_values=["NA"])
    assert len(sinks) == blocks * (heads + 1) * (len(LANGS) + 1)
    for row in sinks.itertuples():
        h = heads if pd.isna(row.head) else int(row.head)
        on = np.ones(summary.windows, bool) if pd.isna(row.lang) else lang_of_window == LANGS.index(row.lang)
        share, frame = part["top_share"][on, row.layer - 1, h], part["top_frame"][on, row.layer - 1, h]
        counts = collections.Counter(int(f) for f in frame[:, 0])
        mode = min(counts, key=lambda f: (-counts[f], f))
        listed = collections.Counter(int(f) for f in frame.ravel())
        common = ";".join(str(f) for f in sorted(listed) if listed[f] >= on.sum() / 2)
        assert row.k == k and row.windows == on.sum() and row.keys == 1500, row  # Whisper: the whole padded window
        assert row.top1_share == pytest.approx(share[:, 0].mean()) and row.top_share == pytest.approx(
            share.sum(axis=1).mean()), row  # fmt: skip
        assert row.uniform_share == pytest.approx(k / 1500) and row.top_frame == mode, row
        assert row.first_share == pytest.approx(part["first_share"][on, row.layer - 1, h].mean()), row
        assert row.top_frame_windows == pytest.approx(np.mean(frame[:, 0] == mode)), row
        assert (row.common_frames if isinstance(row.common_frames, str) else "") == common, row
    for metric, value in (("attention_sink", part["top_share"].sum(axis=-1)), ("attention_first", part["first_share"])):
        rows = table[(table.metric == metric) & table.lang.isna()]
        assert len(rows) == blocks * heads
        for r in rows.itertuples():
            assert r.value == pytest.approx(value[:, r.layer - 1, r.head].mean()), (metric, r)
    assert sum(line.startswith("attention sinks: ") for line in summary.top) == 2, summary.top


def test_a_family_without_attention_weights_is_said_in_one_line(tmp_path):
    """A family whose encoder declares no attention weights (``Encoder.attention_stats`` None: w2v-BERT's) gets no
    attention statistics or sinks, and the report says so in one line (the run's notes)."""
    import types

    from engine.models.w2vbert.encoder import W2vBertEncoder
    from engine.pipelines.heads.run import models

    assert W2vBertEncoder.attention_stats is None
    encoder = types.SimpleNamespace(family="w2vbert", name="w2v-bert-tiny", n_layers_out=3, layer_meaning="",
                                    attention_stats=W2vBertEncoder.attention_stats)  # fmt: skip
    notes = []
    config = configure(HeadsConfig, out=str(tmp_path / "o"), store=str(tmp_path / "s"), importance=("none",))
    models(config, encoder, types.SimpleNamespace(family="w2vbert"), notes)
    said = [n for n in notes if "sinks" in n]
    assert said == ["attention statistics and sinks: not measured (w2v-bert-tiny: the w2vbert encoder does not "
                    "offer its attention weights, Encoder.attention_stats)"], notes  # fmt: skip


def test_an_empty_importance_flag_is_refused_in_one_line(tmp_path):
    """`--importance=` raised a TypeError, even with --plan."""
    with pytest.raises(HeadsError, match="got nothing: pass --importance none"):
        configure(HeadsConfig, out=str(tmp_path / "o"), store=str(tmp_path / "s"), importance=())


def test_unablated_decode_and_scores(job, store, tiny_model_dir, tmp_path):
    from engine.pipelines.decode.config import DecodeConfig
    from engine.pipelines.decode.run import run_decode
    from engine.text import metrics

    out, _, table = job
    none, block1 = _part(out, "none"), _part(out, "block1")
    run_decode(configure(DecodeConfig, store=str(store), model=str(tiny_model_dir), out=str(tmp_path / "dec"),
                         layers=(3,), max_new_tokens=8, batch_size=4, progress=False))  # fmt: skip
    decoded = pq.read_table(tmp_path / "dec" / "hypotheses.parquet").to_pandas()
    for u, (lang, i, _) in enumerate(_utterances(pathlib.Path("."))):
        (text,) = decoded[(decoded.language == lang) & (decoded.id == f"s{i}")].hypothesis
        assert none["hyps"][0, u] == text.strip(), (lang, i)
    for li, lang in enumerate(LANGS):
        norm = metrics.normalizer_for(lang)
        refs = [norm(t) for t in decoded[decoded.language == lang].sort_values("id").reference]
        hyps = [norm(h) for h in block1["hyps"][0, li * PER_LANG : (li + 1) * PER_LANG]]  # block 1, head 0 off
        row = table[(table.metric == "wer") & (table.lang == lang) & (table.layer == 1) & (table["head"] == 0)]
        assert row.value.item() == pytest.approx(metrics.error_rate(refs, hyps, "word", normalize=False))
        assert row.baseline.item() == pytest.approx(none["wer"][0, li])


def test_language_id_baseline_is_the_probes_jobs(job):
    out, _, table = job
    none = _part(out, "none")
    label = np.repeat(np.arange(len(LANGS)), PER_LANG)
    ids = [f"s{i}" for _ in LANGS for i in range(PER_LANG)]
    want = lid_layer(2, none["pooled"][0, 0], label, ids)
    rows = table[(table.metric == "language_id") & table.lang.isna() & (table.scored_layer == 2)]
    assert np.allclose(rows.baseline, want.accuracy)


def _torch_grads(tiny_model_dir, clips, loss_of):
    """d(loss)/d(mask) by torch autograd through transformers' Whisper with out_proj pre-hooks."""
    import torch
    import transformers

    hf = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    mask = torch.ones((2, 4), requires_grad=True)
    dh = hf.config.d_model // 4
    handles = [layer.self_attn.out_proj.register_forward_pre_hook(
        lambda module, args, i=i: (args[0] * mask[i].repeat_interleave(dh),))
        for i, layer in enumerate(hf.model.encoder.layers)]  # fmt: skip
    try:
        loss_of(hf).backward()
    finally:
        for h in handles:
            h.remove()
    return mask.grad.numpy()


def test_gradient_importance_equals_torch_autograd(job, clips, tiny_model_dir, tiny_whisper):
    import torch

    out, _, table = job
    imp = _part(out, "importance")
    mels = []
    for _, _, path in _utterances(clips):
        mel, valid = features_for_audio(load_audio(path), tiny_whisper.dims.n_mels)
        mels.append((torch.from_numpy(np.asarray(mel)), [int(v) for v in valid]))
    label = np.repeat(np.arange(len(LANGS)), PER_LANG)

    def contrastive(hf):
        pooled = []
        for mel, valid in mels:
            states = hf.model.encoder(mel).last_hidden_state  # layer 3: ln_post
            pooled.append(torch.cat([states[w, :n] for w, n in enumerate(valid)]).mean(0))
        p = torch.nn.functional.normalize(torch.stack(pooled), dim=1)
        terms = []
        for u in range(len(p)):
            for b in range(len(LANGS)):
                if b != label[u]:
                    cols = np.flatnonzero(label == b)
                    logits = p[u] @ p[cols].T / 0.1
                    target = int(np.flatnonzero(cols % PER_LANG == u % PER_LANG)[0])
                    terms.append(torch.nn.functional.cross_entropy(logits[None], torch.tensor([target])))
        return torch.stack(terms).mean()

    want = _torch_grads(tiny_model_dir, clips, contrastive)
    got = imp["contrastive_grads"].sum(axis=0)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max(), (got, want)
    assert imp["contrastive_used"].all()

    from engine.models.family import FAMILIES

    trainer = FAMILIES["whisper"].trainer(tiny_model_dir)
    texts = [(clips / lang / f"s{i}.txt").read_text().strip() for lang, i, _ in _utterances(clips)]

    def ce(hf):
        total = 0
        for u, ((mel, valid), (lang, _, _)) in enumerate(zip(mels, _utterances(clips), strict=True)):
            if len(valid) > 1:
                continue
            prompt = trainer.prompt("transcribe", lang)
            seq = torch.tensor([*prompt, *trainer.tokens(texts[u]), trainer.eot])
            logits = hf(input_features=mel, decoder_input_ids=seq[None, :-1]).logits[0]
            total = total + torch.nn.functional.cross_entropy(logits[len(prompt) - 1 :], seq[len(prompt) :],
                                                              reduction="sum")  # fmt: skip
        return total

    want = _torch_grads(tiny_model_dir, clips, ce)
    got = imp["ce_grads"].sum(axis=0)
    assert np.abs(got - want).max() < 1e-4 * np.abs(want).max(), (got, want)
    assert int(imp["ce_left_out"]) == 1  # the utterance over 30 s
    rows = table[(table.metric == "importance_ce") & table.lang.isna()]
    used = imp["ce_used"].astype(bool)
    for _, r in rows.iterrows():
        assert r.value == pytest.approx(np.abs(imp["ce_grads"][used, r.layer - 1, r["head"]]).mean())


def test_resume_a_lost_part_and_a_damaged_one(job, store, tiny_model_dir):
    out, _, _ = job
    before = (out / "heads.parquet").read_bytes()
    again = run_heads(_config(out, store, tiny_model_dir))
    assert again.passes == 0 and (out / "heads.parquet").read_bytes() == before
    (out / "parts" / "none.npz").unlink()  # the cheapest part (one mask, not a block's four): redone alone
    redo = run_heads(_config(out, store, tiny_model_dir))
    assert redo.passes == 1 and (out / "heads.parquet").read_bytes() == before
    data = bytearray((out / "parts" / "block2.npz").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / "parts" / "block2.npz").write_bytes(bytes(data))
    with pytest.raises(BabelgridError, match="block2.npz"):
        run_heads(_config(out, store, tiny_model_dir))
    with pytest.raises(BabelgridError, match="utterances"):  # another setting: refused, nothing mixed
        run_heads(_config(out, store, tiny_model_dir, utterances=3))


def test_refusals(store, tiny_model_dir, tmp_path):
    with pytest.raises(HeadsError, match=r"not in the layer store"):
        run_heads(_config(tmp_path / "a", store, tiny_model_dir, langs=("de", "xx")))
    with pytest.raises(HeadsError, match=r"not layers of this model"):
        run_heads(_config(tmp_path / "b", store, tiny_model_dir, layers=(9,)))
    with pytest.raises(HeadsError, match="importance takes"):
        _config(tmp_path / "c", store, tiny_model_dir, importance=("none", "ce"))


def test_plan_counts_the_passes_and_writes_nothing(store, tiny_model_dir, tmp_path):
    """--plan: the passes over the evaluation set (one unablated, one per block of H masks, each block's lower blocks
    shared by its masks) and their encoder FLOPs by hand from the model's dimensions, every stage timed, a total, and
    no output folder."""
    out = tmp_path / "never"
    plan = plan_heads_run(_config(out, store, tiny_model_dir), get_device("h100"))
    text = plan.render()
    assert not out.exists()
    stages = {s.name: s for s in plan.stages}
    assert list(stages) == ["load + compile", "audio -> input", "ablations: encoder", "ablations: decoder",
                            "scoring: seqsim", "importance", "attention"], text  # fmt: skip
    assert all(s.seconds_here > 0 for s in plan.stages), text
    assert re.search(r"\n  total +\S+ [KMGT]? .* \d+(\.\d+)? (ms|s|min|h) +\S+ (ms|s|min|h)\n", text), text
    # 3 languages x 5 utterances, one of them over 30 s: 16 windows (de 5, en 6, es 5) in batches of 4 rows
    assert "15 utterances (5 a language at most) in 3 languages, 16 windows" in text, text
    dims = ModelDimensions.from_dict(open_store(store).info.dims.to_dict())
    blocks, heads = dims.n_audio_layer, dims.n_audio_head
    assert f"{1 + blocks} over the evaluation set (1 unablated + 1 a block), {1 + blocks * heads} masks" in text, text
    stem, block = whisper_cost.encoder_flops_per_window(dims)
    padded = {n: -(-n // 4) * 4 for n in (5, 6, 5, 5 * heads, 6 * heads)}  # rows of a pass, batches padded to 4
    expected = sum(padded[n] * (stem + blocks * block) for n in (5, 6, 5))  # unablated: every block (layers 2, 3)
    for b in range(1, blocks + 1):  # the blocks below b once per window, b.. the top once per (window, mask)
        expected += sum(padded[n] * (stem + (b - 1) * block) + padded[n * heads] * (blocks - b + 1) * block
                        for n in (5, 6, 5))  # fmt: skip
    assert stages["ablations: encoder"].flops == pytest.approx(expected), text
    assert "greedy decodes of" in text and "peak memory per device" in text and "NVIDIA H100" in text, text


def test_plan_through_the_flags(run_job, store, tiny_model_dir, tmp_path):
    """--plan on the command line: the plan printed with its total here and on --plan_device, exit 0, nothing made."""
    out = tmp_path / "never"
    proc = run_job("heads", "--store", str(store), "--model", str(tiny_model_dir), "--out", str(out), "--utterances",
                   "2", "--nodecode", "--importance", "none", "--plan", "--plan_device", "h100")  # fmt: skip
    assert not out.exists()
    assert "plan: heads (dry run" in proc.stdout and "WER/CER: not scored (--nodecode)" in proc.stdout, proc.stdout
    assert re.search(r"\n  total +.* (ms|s|min|h) +\S+ (ms|s|min|h)\n", proc.stdout), proc.stdout


def test_wav2vec2_store(clips, fleurs_dir, tiny_model_dir, tmp_path):
    """A random wav2vec2 (``babelgrid random-model``'s) over the clips cut to 2 s: no decoder (WER, CE said not
    scored), attention statistics with the padding's keys masked. Spanish has a sixth clip, damaged after encoding,
    so that the 15 utterances scored give the language-ID probe the shapes the Whisper run compiled (2 x 4 heads: 15
    and 135 rows), read from the persistent compile cache instead of two more L-BFGS compiles (24 s of CPU)."""
    import soundfile

    from engine.models.random_folder import write_random_folder

    model, short = tmp_path / "w2v", tmp_path / "short"
    write_random_folder("wav2vec2", model)
    extra = ("es", PER_LANG, fleurs_dir / f"fleurs-es-{PER_LANG:03d}.ogg")
    for lang, i, path in [*_utterances(clips), extra]:
        (short / lang).mkdir(parents=True, exist_ok=True)
        soundfile.write(short / lang / f"s{i}.wav", load_audio(path)[: 32000 - 800 * i], 16000)
        (short / lang / f"s{i}.txt").write_text(path.with_suffix(".txt").read_text())
    store = tmp_path / "store"
    _encode(model, short, store)
    with pytest.raises(HeadsError, match="pass the store's model"):
        run_heads(_config(tmp_path / "wrong", store, tiny_model_dir))
    (short / "es" / "s3.wav").write_bytes(b"RIFF....WAVEfmt garbage")  # damaged after encoding: skipped, counted
    summary = run_heads(_config(tmp_path / "out", store, model, utterances=PER_LANG + 1))
    assert summary.skipped == {"audio_unreadable": [("es", "s3")]} and summary.utterances == len(LANGS) * PER_LANG
    table = pq.read_table(tmp_path / "out" / "heads.parquet").to_pandas()
    assert set(table.metric) == {"r1", "language_id", "importance_contrastive", "importance_contrastive_signed",
                                 "attention_distance", "attention_entropy", "attention_local", "attention_sink",
                                 "attention_first"}  # fmt: skip
    assert summary.windows == summary.utterances
    assert any("no text decoder" in n for n in summary.notes)
    assert (tmp_path / "out" / "figures" / "heads.png").stat().st_size > 10_000


def test_the_analysis_page_reads_the_folder(job):
    """docs/analysis.md's heads cell on the job's folder, as written there."""
    from tests.test_docs import analysis_cells, run_python

    out, _, _ = job
    cells = analysis_cells()
    proc = run_python(cells["Loading with checks"] + cells["heads"], BABELGRID_HEADS=str(out))
    assert proc.returncode == 0, proc.stderr
    assert "8 heads; metrics" in proc.stdout and "rank correlation" in proc.stdout


def test_the_report_names_the_head_that_hurts_or_says_none_does():
    """The line "block 1 head 1 off changes it most (+0.000)" named the least helpful head beside a +0.083; with
    two languages the per-language lines compared each language with itself."""
    from engine.pipelines.heads.table import report_lines

    row = lambda b, h, value, delta: (b, h, "r1", 3, None, None, value, 0.25, delta)  # noqa: E731
    lines = report_lines([row(1, 0, 0.333, 0.083), row(1, 1, 0.25, 0.0)], [])
    assert lines == ["r1 at layer 3: 0.250 unablated; no head off lowers it; block 1 head 0 off moves it most, to "
                     "0.333 (+0.083)"], lines  # fmt: skip
    lines = report_lines([row(1, 0, 0.333, 0.083), row(2, 1, 0.125, -0.125), row(1, 1, 0.5, float("nan"))], [])
    assert lines == ["r1 at layer 3: 0.250 unablated; block 2 head 1 off lowers it most, to 0.125 (-0.125)"], lines
    two = [(lang, "r1", 3, 1, 0, 0.0, 0.0, 0.0, 1) for lang in ("de", "en")]
    assert report_lines([], two) == [] and len(report_lines([], two + [("fr", *two[0][1:])])) == 3
