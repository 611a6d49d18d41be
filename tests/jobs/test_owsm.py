"""OWSM through the jobs: a random OWSM that ESPnet's own code builds and saves in its published layout
(``tests/models/owsm/owsm_reference.py``: ``NARROW`` widths, 2 encoder and 2 decoder blocks, a 10 s window) encodes real
FLEURS clips (two languages, two shared ids, one clip over the window) through the encode job's library entry point;
seqsim and retrieval run on its store (theirs), and decode through its flags (layers 1 and L+1, ASR and ST, greedy,
beam:3 and the CTC lens; ``--language detect`` through its library entry point). One job process: each would spend
more starting JAX and loading the model than on four utterances.

Checked against ESPnet: every stored layer equals ESPnet's encoder outputs on ESPnet's own frontend, window by window,
within 5e-5 of each layer's peak (the parity tests' frontend bound: torch's float32 STFT against ours in float64;
the encoder itself is within 1e-5, tests/models/owsm/test_owsm_parity.py); the decode job's greedy and beam tokens at
layer L+1 equal ESPnet's ``Speech2Text`` at beam 1 and 3, window by window, token for token; with ``--language
detect`` each window's language is ESPnet's ``Speech2Language`` choice and its tokens ``Speech2Text``'s with it; its
CTC logit lens (``--decoding ctc``) at layer L+1 equals ESPnet's ``CTC.argmax`` on the stored output (which equals
ESPnet's encoder output, above), window by window, repeats collapsed and blanks dropped.
"""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from engine.data.audio import load_audio
from engine.models import family as fam
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.pipelines.retrieval.config import RetrievalConfig
from engine.pipelines.retrieval.run import run_retrieval
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.run import run_similarity
from engine.runtime.options import configure
from engine.stores.reader import open_store
from tests.models.owsm import owsm_reference as ref

REL = 5e-5  # of each layer's peak: the frontend's bound (module docstring)
MAX_TOKENS = 12
BEAM = 3
# Two translation pairs of the sample (its README); fr "b" (10.2 s) spans two 10 s windows.
PAIRS = {"a": ("fleurs-fr-005", "fleurs-pt-002"), "b": ("fleurs-fr-000", "fleurs-pt-007")}
LANGS = ("fr", "pt")
TOKENS = {"fr": "<fra>", "pt": "<por>"}
WINDOW = ref.SECONDS * ref.SAMPLE_RATE
TOP = 3  # L+1 of the 2-block model


@pytest.fixture(scope="module")
def owsm(fleurs_dir, run_job, tmp_path_factory):
    root = tmp_path_factory.mktemp("owsm-jobs")
    model = ref.write_model(root / "model", fleurs_dir, narrow=True)
    clips = root / "clips"
    for uid, stems in PAIRS.items():
        for lang, stem in zip(LANGS, stems, strict=True):
            (clips / lang).mkdir(parents=True, exist_ok=True)
            for ext in (".ogg", ".txt"):
                (clips / lang / f"{uid}{ext}").symlink_to(fleurs_dir / f"{stem}{ext}")
    references = root / "english.tsv"  # any English text serves as the translate references of a random model
    references.write_text("".join(f"{u}\t{(fleurs_dir / f'fleurs-en-00{i}.txt').read_text().strip()}\n"
                                  for i, u in enumerate(PAIRS)))  # fmt: skip
    store, decode = root / "store", root / "decode"
    encoded = run_encode(configure(EncodeConfig, model=str(model), dataset=f"folder:{clips}", out=str(store),
                                   progress=False)).report()  # fmt: skip
    assert "encoded 4 utterances" in encoded and "5 windows" in encoded, encoded
    # seqsim and retrieval in this process (their library entry points, as tests/jobs/test_families.py runs them):
    # a job process would spend more starting JAX than on four utterances.
    run_similarity(configure(SimilarityConfig, store=str(store), out=str(root / "sim"), measures=("seqsim",),
                             progress=False))  # fmt: skip
    run_retrieval(configure(RetrievalConfig, similarity=str(root / "sim"), out=str(root / "retrieval")))
    decoded = run_job(
        "decode", "--store", str(store), "--model", str(model), "--out", str(decode), "--layers", f"1,{TOP}",
        "--tasks", "transcribe,translate", "--ln_post", "on", "--max_new_tokens", str(MAX_TOKENS),
        "--references", str(references), "--batch_size", "3", "--decoding", f"greedy,ctc,beam:{BEAM}",
    )  # fmt: skip
    return dict(root=root, model=model, store=store, decode=decode, stdout=decoded.stdout, fleurs=fleurs_dir)


@pytest.fixture(scope="module")
def espnet(owsm):
    return ref.speech2text(owsm["model"], MAX_TOKENS)


@pytest.fixture(scope="module")
def detected(owsm):
    """``--language detect`` at layer L+1, greedy, transcribe: the decode job's library entry point in this process
    (a second job process would spend more starting JAX than decoding five windows)."""
    from engine.pipelines.decode.config import DecodeConfig
    from engine.pipelines.decode.run import run_decode

    out = owsm["root"] / "decode-detect"
    run_decode(configure(DecodeConfig, store=str(owsm["store"]), model=str(owsm["model"]), out=str(out),
                         layers=(TOP,), tasks=("transcribe",), language="detect", max_new_tokens=MAX_TOKENS,
                         batch_size=3, progress=False))  # fmt: skip
    return pq.read_table(out / "hypotheses.parquet").to_pandas()


def _windows(audio: np.ndarray) -> list[np.ndarray]:
    return [audio[i : i + WINDOW] for i in range(0, len(audio), WINDOW)]


def test_the_store_is_an_owsm_store(owsm):
    info = open_store(str(owsm["store"])).info
    assert info.family == "owsm" and info.frame_rate == 25.0 and info.embed == 256
    assert info.layers == (0, 1, 2, TOP) and info.layer_meaning == fam.OWSM_LAYERS
    assert fam.detect_family(owsm["model"]).name == "owsm"
    rows = (owsm["root"] / "retrieval" / "retrieval.csv").read_text().splitlines()
    assert len(rows) > 1 and {r.split(",")[0] for r in rows[1:]} <= set(LANGS)


def test_stored_layers_equal_espnet_encoder(owsm, espnet):
    model, reader = espnet.s2t_model, open_store(str(owsm["store"]))
    for uid, stems in PAIRS.items():
        for lang, stem in zip(LANGS, stems, strict=True):
            per_layer = [[] for _ in range(TOP + 1)]
            for window in _windows(load_audio(owsm["fleurs"] / f"{stem}.ogg")):
                valid = ((len(window) // 160) // 2 - 1) // 2  # conv2d's frames of the window's 1 + s // 160
                for layer, t in enumerate(_espnet_window_states(model, window)):
                    per_layer[layer].append(t[0, :valid].numpy())
            for layer, parts in enumerate(per_layer):
                theirs, ours = np.concatenate(parts), reader.states(lang, uid, layer)
                assert ours.shape == theirs.shape, (lang, uid, layer, ours.shape, theirs.shape)
                err, peak = np.abs(ours - theirs).max(), np.abs(theirs).max()
                assert err <= REL * peak, f"{lang}/{uid} layer {layer}: {err / peak:.2e} of the peak"


def test_decode_scores_two_layers_asr_and_st(owsm):
    scores = list(csv.DictReader((owsm["decode"] / "scores.csv").open()))
    got = {(r["language"], int(r["layer"]), r["task"], r["metric"]) for r in scores}
    for lang in LANGS:
        for layer in (1, TOP):
            assert {(lang, layer, "transcribe", "wer"), (lang, layer, "transcribe", "cer")} <= got, sorted(got)
            assert {(lang, layer, "translate", "bleu"), (lang, layer, "translate", "chrf")} <= got, sorted(got)
    assert (owsm["decode"] / "scores-greedy.png").is_file() and (owsm["decode"] / "report.md").is_file()
    assert {(lang, layer, "ctc") for lang in LANGS for layer in (1, TOP)} <= {
        (r["language"], int(r["layer"]), r["decoding"]) for r in scores if r["task"] == "transcribe"
    }
    assert not [r for r in scores if r["decoding"] == "ctc" and r["task"] == "translate"]
    assert {(lang, layer, task, f"beam:{BEAM}") for lang in LANGS for layer in (1, TOP)
            for task in ("transcribe", "translate")} <= {
        (r["language"], int(r["layer"]), r["task"], r["decoding"]) for r in scores
    }  # fmt: skip
    # 4 utterances x 2 layers x 2 tasks for greedy and for beam, and x 2 layers for ctc (transcribe only)
    assert "decoded 40 utterance-parts" in owsm["stdout"], owsm["stdout"]


@pytest.mark.parametrize("beam", [1, BEAM])
def test_last_layer_greedy_and_beam_tokens_equal_espnet(owsm, espnet, beam):
    """Greedy (beam 1) and ``beam:3`` at layer L+1 against ESPnet's ``Speech2Text`` at that beam, window by window."""
    from engine.models.owsm.loaded import load_owsm

    ours = load_owsm(owsm["model"])
    espnet = espnet if beam == 1 else ref.speech2text(owsm["model"], MAX_TOKENS, beam_size=beam)
    table = pq.read_table(owsm["decode"] / "hypotheses.parquet").to_pandas()
    decoding = "greedy" if beam == 1 else f"beam:{beam}"
    for uid, stems in PAIRS.items():
        for lang, stem in zip(LANGS, stems, strict=True):
            for task, token in (("transcribe", "<asr>"), ("translate", "<st_eng>")):
                ids = []
                for window in _windows(load_audio(owsm["fleurs"] / f"{stem}.ogg")):
                    ids += _espnet_tokens(espnet(window, lang_sym=TOKENS[lang], task_sym=token), ours)
                row = table[(table["id"] == uid) & (table["language"] == lang) & (table["layer"] == TOP)
                            & (table["task"] == task) & (table["decoding"] == decoding)]  # fmt: skip
                assert len(row) == 1, (lang, uid, task)
                assert row["n_tokens"].iloc[0] == len(ids) and row["hypothesis"].iloc[0] == ours.text(ids), (
                    lang, uid, task, row["hypothesis"].iloc[0], ours.text(ids),
                )  # fmt: skip
                assert row["language_token"].iloc[0] == TOKENS[lang].strip("<>")


def test_detected_language_and_its_tokens_equal_espnet(owsm, espnet, detected):
    """``--language detect``: each window's language is ESPnet's ``Speech2Language`` choice, and the window decodes
    as ``Speech2Text`` does with it; the row names its first window's language."""
    from engine.models.owsm.loaded import load_owsm

    ours, s2l = load_owsm(owsm["model"]), ref.speech2language(owsm["model"])
    assert len(detected) == 4 and set(detected["decoding"]) == {"greedy"}
    for uid, stems in PAIRS.items():
        for lang, stem in zip(LANGS, stems, strict=True):
            ids, languages = [], []
            for window in _windows(load_audio(owsm["fleurs"] / f"{stem}.ogg")):
                languages.append(s2l(window)[0][0])  # ESPnet's n-best, most probable first
                ids += _espnet_tokens(espnet(window, lang_sym=languages[-1], task_sym="<asr>"), ours)
            row = detected[(detected["id"] == uid) & (detected["language"] == lang)]
            assert len(row) == 1, (lang, uid)
            assert row["language_token"].iloc[0] == languages[0].strip("<>"), (lang, uid, languages)
            assert row["n_tokens"].iloc[0] == len(ids) and row["hypothesis"].iloc[0] == ours.text(ids), (lang, uid)


def _espnet_tokens(results, ours) -> list[int]:
    """The best hypothesis' tokens of a ``Speech2Text`` call, after the prompt and up to the first ``<eos>`` (ESPnet
    appends one after ``MAX_TOKENS`` tokens when none came)."""
    eos, tokens = ours.config.token_id("<eos>"), results[0][4].yseq.tolist()[4:]
    return tokens[: tokens.index(eos)] if eos in tokens else tokens


@pytest.mark.parametrize(
    ("job", "settings", "says"),
    [
        ("decode", dict(decodings=("beam:4",), length_penalty=0.5), "has no such option"),
        ("decode", dict(decode_as=(("fr", "xyz"),)), "has no token in this OWSM model"),
        ("decode --plan", {}, "decode --plan has no cost model"),
        ("align", {}, "a cross-attention head"),
    ],
)
def test_refusals_name_the_fix(owsm, tmp_path, job, settings, says):
    """Each refusal is the one line the job prints (its error's message); called through the jobs' library entry
    points in this process (what their flags reach: ``--decoding``, ``--length_penalty``, ``--decode_as``, ``--plan``),
    which a job process each would spend most of its time starting."""
    from engine.errors import BabelgridError
    from engine.pipelines.align.config import AlignConfig
    from engine.pipelines.align.run import run_align
    from engine.pipelines.decode.config import DecodeConfig
    from engine.pipelines.decode.run import run_decode
    from engine.pipelines.stages.decode_plan import plan_decode_run

    given = dict(store=str(owsm["store"]), model=str(owsm["model"]), out=str(tmp_path / "out"), progress=False)
    calls = {
        "decode": lambda: run_decode(configure(DecodeConfig, **given, **settings)),
        "decode --plan": lambda: plan_decode_run(configure(DecodeConfig, **given, **settings), None),
        "align": lambda: run_align(configure(AlignConfig, **given, **settings)),
    }
    with pytest.raises(BabelgridError) as error:
        calls[job]()
    text = str(error.value)
    assert says in text and "\n" not in text, text
    if job == "align":
        assert "Whisper" in text and "--words" in text, text
    assert not (tmp_path / "out").exists()


def _espnet_window_states(model, window: np.ndarray):
    """ESPnet's frontend and encoder on one window padded as Speech2Text pads it: (layer 0, block outputs, output)."""
    speech = torch.nn.functional.pad(torch.from_numpy(window), (0, WINDOW - len(window)))[None]
    with torch.no_grad():
        feats, flen = model.normalize(*model._extract_feats(speech, torch.tensor([WINDOW])))
        layer0, _ = model.encoder.embed(feats, torch.ones(1, 1, feats.shape[1], dtype=torch.bool))
        (out, hidden), _, _ = model.encoder(feats, flen, return_all_hs=True)
    return [layer0, *hidden, out]


def test_ctc_logit_lens_last_layer_equals_espnet_ctc(owsm, espnet):
    from engine.models.owsm.loaded import load_owsm

    ours, model, reader = load_owsm(owsm["model"]), espnet.s2t_model, open_store(str(owsm["store"]))
    table = pq.read_table(owsm["decode"] / "hypotheses.parquet").to_pandas()
    for uid, stems in PAIRS.items():
        for lang, stem in zip(LANGS, stems, strict=True):
            ids, stored, start = [], reader.states(lang, uid, TOP), 0
            for window in _windows(load_audio(owsm["fleurs"] / f"{stem}.ogg")):
                valid = ((len(window) // 160) // 2 - 1) // 2
                with torch.no_grad():
                    best = model.ctc.argmax(torch.from_numpy(stored[None, start : start + valid]))[0].tolist()
                start += valid
                ids += [t for i, t in enumerate(best) if t != model.blank_id and (i == 0 or t != best[i - 1])]
            assert start == len(stored)
            row = table[(table["id"] == uid) & (table["language"] == lang) & (table["layer"] == TOP)
                        & (table["decoding"] == "ctc")]  # fmt: skip
            assert len(row) == 1 and row["task"].iloc[0] == "transcribe", (lang, uid)
            assert row["n_tokens"].iloc[0] == len(ids) and row["hypothesis"].iloc[0] == ours.text(ids), (lang, uid)


def test_challenge_probe_and_interp_on_an_owsm_store(owsm, whisper_words, tmp_path):
    """challenge, probe and interp read the OWSM store (their library entry points, in this process, as seqsim's):
    its four layers and 25 frames per second. interp takes the words the align job timed on a tiny Whisper's store of
    the same clips (``whisper_words``); its cosines are recomputed from the OWSM states at the centre frames the words'
    seconds map to at 25/s (``frame_span``, a later word starting where an overlapping earlier one ends)."""
    from engine.pipelines.challenge.run import ChallengeConfig, run_challenge
    from engine.pipelines.interp.config import InterpConfig
    from engine.pipelines.interp.inputs import clean_word
    from engine.pipelines.interp.run import run_interp
    from engine.pipelines.probe import run as probe
    from engine.pipelines.probe.config import ProbeConfig
    from engine.stores.words import frame_span as word_frames

    store, reader = str(owsm["store"]), open_store(str(owsm["store"]))
    run_challenge(configure(ChallengeConfig, store=store, out=str(tmp_path / "challenge"), pairs="fr:pt",
                            phone_threshold=0.16))  # fmt: skip
    with open(tmp_path / "challenge" / "fr__pt.csv", newline="") as f:
        assert {r["id"] for r in csv.DictReader(f)} == set(PAIRS)

    # As on the wav2vec2 store (tests/jobs/test_families_jobs.py): each sentence is one "word", its id the concept.
    text = {lang: dict(zip(*(reader.utterances_table(lang).column(c).to_pylist() for c in ("id", "transcription")),
                           strict=True)) for lang in LANGS}  # fmt: skip
    rows = [("fr", text["fr"][u], "pt", text["pt"][u], "synonym") for u in PAIRS]
    rows += [("fr", text["fr"]["a"], "pt", text["pt"]["b"], "unrelated"), ("fr", text["fr"]["b"], "pt", text["pt"]["a"],
             "unrelated")]  # fmt: skip
    relations = tmp_path / "relations.csv"
    relations.write_bytes(probe.relations_csv_bytes(rows))
    probe.run_probe(configure(ProbeConfig, store=store, out=str(tmp_path / "probe"), relations=str(relations),
                              seeds=2))  # fmt: skip
    scores = pd.read_csv(tmp_path / "probe" / "probe.csv")
    assert set(scores["layer"]) == {0, 1, 2, TOP} and {*scores["lang_a"], *scores["lang_b"]} == set(LANGS), scores

    out = tmp_path / "interp"
    run_interp(configure(InterpConfig, store=store, words=str(whisper_words), out=str(out), poolings=("centre",),
                         layers=(1, TOP), pairs="fr:pt"))  # fmt: skip
    pairs = pd.read_parquet(out / "fr__pt" / "pairs.parquet")
    assert len(pairs) and set(pairs["layer"]) <= {1, TOP} and set(pairs["id_a"]) <= set(PAIRS)

    def centres(lang: str, uid: str) -> dict[int, int]:
        n = int(reader.lengths(lang)[reader.utterance_index(lang, uid)])
        table = pd.read_parquet(whisper_words / lang / "words.parquet").query("id == @uid").sort_values("word_index")
        spans, end = {}, 0
        for row in table.itertuples():
            span = word_frames(row.start, row.end, n, reader.info.frame_rate)
            if span is None or not clean_word(row.word):
                continue  # interp's words: timed, and more than punctuation
            s, e = span
            s = max(s, end) if spans else s
            if s < e:
                spans[row.word_index], end = s + (e - s) // 2, e
        return spans

    for row in pairs.itertuples():
        a = reader.states("fr", row.id_a, row.layer)[centres("fr", row.id_a)[row.word_index_a]]
        b = reader.states("pt", row.id_b, row.layer)[centres("pt", row.id_b)[row.word_index_b]]
        cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert abs(cosine - row.cosine) <= 1e-5, (row, cosine)


def test_sae_early_exit_reads_the_layer_as_the_decode_job(owsm, tmp_path):
    """The sae job's early exit on an OWSM store: its stored column (the decoder on layer 1 through OWSM's
    ``after_norm``, applied by ``final_norm`` to the raw layer) is the decode job's greedy early exit from layer 1
    with ``--ln_post on``, utterance by utterance (the same batches of 3 windows)."""
    from engine.pipelines.decode.hypotheses import read_hypotheses
    from engine.pipelines.sae.config import SaeConfig
    from engine.pipelines.sae.run import run_sae

    out = tmp_path / "sae"
    run_sae(configure(SaeConfig, store=str(owsm["store"]), out=str(out), model=str(owsm["model"]), layers=(1,),
                      epochs=1, batch_size=256, expansion=2, k=4, warmup=1, eval_utterances=2, activations=0,
                      decode_utterances=2, max_new_tokens=MAX_TOKENS, decode_batch=3, progress=False))  # fmt: skip
    ours = pq.read_table(out / "layer-1" / "early_exit.parquet").to_pandas()
    theirs = read_hypotheses(str(owsm["decode"])).to_pandas()
    theirs = theirs[(theirs.layer == 1) & (theirs.task == "transcribe") & (theirs.decoding == "greedy")]
    assert len(ours) == 4
    for _, row in ours.iterrows():
        match = theirs[(theirs.language == row.language) & (theirs.id == row.id)]
        assert match.hypothesis.tolist() == [row.hypothesis], (row.language, row.id)
