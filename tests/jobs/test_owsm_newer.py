"""OWSM v4, POWSM and OWSM-CTC v4 through the jobs: random models that ESPnet 202611 builds in their published shapes
at the job tests' width (``NARROW``; the real widths are the parity tests', tests/models/owsm)
(``tests/models/owsm/owsm_reference.py``: v4's ``conv2d8`` and 128 mels; POWSM's 20 s window and ``<pr>`` task;
``owsm_ctc_reference.py``: OWSM-CTC's interior heads, prefix and prompt) encode real FLEURS clips (English and German)
through the encode job's library entry point, seqsim runs on the v4 store, decode runs POWSM's phone recognition
(``--tasks phones``) and transcription, and OWSM-CTC's heads (``--decoding ctc``) at an interior head's layer and L+1.

Checked against ESPnet and the field's libraries:
- the v4 store's top layer equals ESPnet's encoder on ESPnet's frontend within 5e-5 of its peak (the frontend's bound,
  tests/models/owsm/test_owsm_parity.py), at 80 ms frames;
- POWSM's ``phones`` hypotheses are ESPnet's ``Speech2Text`` tokens with ``task_sym="<pr>"``, token for token;
- its PER is jiwer's WER over the phones that phonemizer (espeak-ng) gives the reference's words, against the
  hypothesis' ``/.../`` phones, both cleaned to panphon's segments as ``engine.text.phones`` does;
- a model without ``<pr>`` refuses ``--tasks phones`` in one line naming the tasks it has;
- OWSM-CTC's store holds ESPnet's layers for the prefix ``<nolang> <asr>`` (the prefix's positions dropped), and its
  CTC decode at an interior head's layer and at L+1 is ESPnet's interior and final heads' best path over those frames;
  its greedy decode, the windows encoded again with the prefix ``<deu> <asr>`` or ``<deu> <st_eng>``, is ESPnet's
  ``best_path`` at L+1 and its interior head at layer 2, for transcription and translation; a beam search and
  finetune, which need an attention decoder, are refused in one line.
"""

from __future__ import annotations

import csv
import re

import jiwer
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from engine.data.audio import load_audio
from engine.errors import BabelgridError
from engine.pipelines.decode.config import DecodeConfig
from engine.pipelines.decode.run import run_decode
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.run import run_similarity
from engine.runtime.options import configure
from engine.stores.reader import open_store
from engine.text.metrics import normalizer_for
from tests.models.owsm import owsm_ctc_reference as cref
from tests.models.owsm import owsm_reference as ref

CLIPS = {"en": ("fleurs-en-000", "fleurs-en-001"), "de": ("fleurs-de-000", "fleurs-de-005")}  # de-005: 8.4 s
MAX_TOKENS = 12
TOP = 3  # L+1 of the 2-block models


def _encode(root, fleurs_dir, variant):
    if variant == "ctc":
        model = cref.write_model(root / "model-ctc", fleurs_dir, narrow=True)
    else:
        model = ref.write_model(root / f"model-{variant}", fleurs_dir, variant=variant, narrow=True)
    clips = root / "clips"
    if not clips.exists():
        for lang, stems in CLIPS.items():
            (clips / lang).mkdir(parents=True)
            for i, stem in enumerate(stems):
                for ext in (".ogg", ".txt"):
                    (clips / lang / f"u{i}{ext}").symlink_to(fleurs_dir / f"{stem}{ext}")
    store = root / f"store-{variant}"
    run_encode(configure(EncodeConfig, model=str(model), dataset=f"folder:{clips}", out=str(store), progress=False))
    return model, store


@pytest.fixture(scope="module")
def v4(tmp_path_factory, fleurs_dir):
    root = tmp_path_factory.mktemp("owsm-v4")
    model, store = _encode(root, fleurs_dir, "v4")
    run_similarity(configure(SimilarityConfig, store=str(store), out=str(root / "sim"), measures=("seqsim",),
                             progress=False))  # fmt: skip
    return dict(root=root, model=model, store=store)


@pytest.fixture(scope="module")
def powsm(tmp_path_factory, fleurs_dir):
    root = tmp_path_factory.mktemp("powsm")
    model, store = _encode(root, fleurs_dir, "powsm")
    out = root / "decode"
    run_decode(configure(DecodeConfig, store=str(store), model=str(model), out=str(out), layers=(TOP,),
                         tasks=("phones", "transcribe"), max_new_tokens=MAX_TOKENS, progress=False))  # fmt: skip
    return dict(root=root, model=model, store=store, decode=out)


def test_v4_store_has_80_ms_frames_and_equals_espnet(v4, fleurs_dir):
    reader = open_store(str(v4["store"]))
    assert reader.info.frame_rate == 12.5 and reader.info.layers == (0, 1, 2, TOP)
    s2t = ref.speech2text(v4["model"], MAX_TOKENS)
    audio = load_audio(fleurs_dir / "fleurs-en-000.ogg")[: ref.SECONDS * ref.SAMPLE_RATE]
    n = ref.SECONDS * ref.SAMPLE_RATE
    speech = torch.from_numpy(np.pad(audio, (0, n - len(audio))))[None]
    with torch.no_grad():
        out, _ = s2t.s2t_model.encode(speech, torch.tensor([n]))
    index = [r.id for r in reader.arrays("en").rows].index("u0")  # 10.6 s: two windows of 10 s
    states, _ = reader.language_layer("en", TOP, [index], np.float32, frames=int(reader.lengths("en")[index]))
    first = (((1 + n // 160 - 1) // 2 - 1) // 2 - 1) // 2  # the first window's: three stride-2 convolutions
    theirs = out[0, :first].numpy()
    assert np.abs(states[0, :first] - theirs).max() <= 5e-5 * np.abs(theirs).max()
    assert (v4["root"] / "sim").is_dir()


def test_powsm_phone_tokens_equal_espnet_pr_task(powsm, fleurs_dir):
    s2t = ref.speech2text(powsm["model"], MAX_TOKENS)
    table = pq.read_table(powsm["decode"] / "hypotheses.parquet").to_pandas()
    phones = table[table["task"] == "phones"]
    assert len(phones) == 4
    from engine.models.owsm.loaded import load_owsm

    ours = load_owsm(powsm["model"])
    eos = ours.config.token_id("<eos>")
    for lang, stems in CLIPS.items():
        for i, stem in enumerate(stems):
            hyp = s2t(load_audio(fleurs_dir / f"{stem}.ogg"), lang_sym=ref.LANGUAGES[("en", "de").index(lang)],
                      task_sym="<pr>")[0][4]  # fmt: skip
            tokens = hyp.yseq.tolist()[4:]
            tokens = tokens[: tokens.index(eos)] if eos in tokens else tokens
            row = phones[(phones["language"] == lang) & (phones["id"] == f"u{i}")].iloc[0]
            assert row["hypothesis"] == ours.text(tokens), (lang, i)


def test_powsm_per_is_jiwer_over_espeak_phones(powsm):
    import panphon
    from phonemizer.backend import EspeakBackend
    from phonemizer.separator import Separator

    table = pq.read_table(powsm["decode"] / "hypotheses.parquet").to_pandas()
    with open(powsm["decode"] / "scores.csv", newline="") as f:
        scores = [r for r in csv.DictReader(f) if r["task"] == "phones"]
    assert {r["metric"] for r in scores} == {"per"}
    segs = panphon.FeatureTable().ipa_segs
    fix = {"ᵻ": "ɨ", "ɚ": "ər", "ɝ": "ɜr", "g": "ɡ", "r̝": "r"}  # espeak's non-IPA letters (engine.text.phones)

    def clean(text):
        for a, b in fix.items():
            text = text.replace(a, b)
        return segs(text)

    for lang, voice in (("en", "en-us"), ("de", "de")):
        rows = table[(table["task"] == "phones") & (table["language"] == lang)]
        backend = EspeakBackend(voice, with_stress=False, language_switch="remove-flags")
        refs = []
        for text in rows["reference"]:
            words = normalizer_for(lang)(text).split()
            said = backend.phonemize(words, separator=Separator(phone="", word=" ", syllable=""), strip=True)
            refs.append(" ".join(s for w in said for s in clean(w.replace(" ", ""))))
        hyps = [" ".join(s for p in re.findall(r"/([^/]+)/", h) for s in clean(p)) for h in rows["hypothesis"]]
        want = jiwer.wer(refs, hyps)
        got = float(next(r["value"] for r in scores if r["language"] == lang))
        assert got == pytest.approx(want, abs=1e-12), (lang, got, want)
    assert "PER in %" in (powsm["decode"] / "report.md").read_text()


def test_a_model_without_phone_recognition_refuses_the_phones_task(v4):
    with pytest.raises(BabelgridError, match=r"task phones: .* has no prompt for it; it decodes transcribe, translate"):
        run_decode(configure(DecodeConfig, store=str(v4["store"]), model=str(v4["model"]), out=str(v4["root"] / "d"),
                             layers=(TOP,), tasks=("phones",), progress=False))  # fmt: skip


@pytest.fixture(scope="module")
def owsm_ctc(tmp_path_factory, fleurs_dir):
    root = tmp_path_factory.mktemp("owsm-ctc")
    model, store = _encode(root, fleurs_dir, "ctc")
    out = root / "decode"
    run_decode(configure(DecodeConfig, store=str(store), model=str(model), out=str(out), layers=(2, 5),
                         tasks=("transcribe", "translate"), decodings=("greedy", "ctc"), langs=("de",),
                         progress=False))  # fmt: skip
    return dict(root=root, model=model, store=store, decode=out)


def test_owsm_ctc_store_and_ctc_decode_equal_espnet_heads(owsm_ctc, fleurs_dir):
    from engine.models.interface import OWSM_CTC_LAYERS
    from engine.models.owsm.loaded import load_owsm

    reader = open_store(str(owsm_ctc["store"]))
    assert reader.info.layer_meaning == OWSM_CTC_LAYERS and reader.info.frame_rate == 12.5
    s2t, ours = cref.speech2text(owsm_ctc["model"]), load_owsm(owsm_ctc["model"])
    table = pq.read_table(owsm_ctc["decode"] / "hypotheses.parquet").to_pandas()
    n = ref.SECONDS * ref.SAMPLE_RATE
    audio = load_audio(fleurs_dir / "fleurs-de-005.ogg")
    assert len(audio) <= n  # 8.4 s: one window
    window = torch.from_numpy(np.pad(audio, (0, n - len(audio))))[None]
    with torch.no_grad():
        enc, interior = s2t._encode(window, "<na>", "<nolang>", "<asr>")
    index = [r.id for r in reader.arrays("de").rows].index("u1")
    valid = int(reader.lengths("de")[index])
    stored, _ = reader.language_layer("de", 2, [index], np.float32, frames=valid)
    theirs = dict(interior)[2][0, 2 : 2 + valid].numpy()  # the audio frames, after the prefix's two
    assert np.abs(stored[0] - theirs).max() <= 5e-5 * np.abs(theirs).max()
    blank = s2t.s2t_model.blank_id
    ctc = table[table["decoding"] == "ctc"]
    for layer, h in ((2, dict(interior)[2]), (5, enc)):
        with torch.no_grad():
            best = s2t.s2t_model.ctc.argmax(h[:, 2 : 2 + valid])[0]
        ids = [int(t) for t in torch.unique_consecutive(best) if int(t) != blank]
        row = ctc[(ctc["language"] == "de") & (ctc["id"] == "u1") & (ctc["layer"] == layer)].iloc[0]
        assert row["hypothesis"] == ours.text(ids) and not row["ln_post"], layer


def test_owsm_ctc_greedy_reads_its_heads_with_the_task_prefix(owsm_ctc, fleurs_dir):
    """greedy: the windows encoded again with the prefix ``<deu> <task>``; at L+1 ESPnet's ``best_path``, at an
    interior layer ESPnet's interior head on the same encoding, over every position (the prefix's two included)."""
    from engine.models.owsm.loaded import load_owsm

    s2t, ours = cref.speech2text(owsm_ctc["model"]), load_owsm(owsm_ctc["model"])
    table = pq.read_table(owsm_ctc["decode"] / "hypotheses.parquet").to_pandas()
    greedy = table[(table["decoding"] == "greedy") & (table["language"] == "de") & (table["id"] == "u1")]
    n = ref.SECONDS * ref.SAMPLE_RATE
    audio = load_audio(fleurs_dir / "fleurs-de-005.ogg")
    window = np.pad(audio, (0, n - len(audio)))
    blank = s2t.s2t_model.blank_id
    for task, token in (("transcribe", "<asr>"), ("translate", "<st_eng>")):
        final = s2t.best_path(window, lang_sym="<deu>", task_sym=token)[0][2]
        row = greedy[(greedy["task"] == task) & (greedy["layer"] == 5)].iloc[0]
        assert row["hypothesis"] == ours.text(final) and row["language_token"] == "deu", task
        with torch.no_grad():
            _, interior = s2t._encode(torch.from_numpy(window)[None], "<na>", "<deu>", token)
            best = s2t.s2t_model.ctc.argmax(dict(interior)[2])[0]
        ids = [int(t) for t in torch.unique_consecutive(best) if int(t) != blank]
        assert greedy[(greedy["task"] == task) & (greedy["layer"] == 2)].iloc[0]["hypothesis"] == ours.text(ids), task


def test_owsm_ctc_refuses_what_needs_an_attention_decoder(owsm_ctc):
    from engine.models.owsm.trainer import load_trainer

    with pytest.raises(BabelgridError, match="decodes greedily only"):
        run_decode(configure(DecodeConfig, store=str(owsm_ctc["store"]), model=str(owsm_ctc["model"]),
                             out=str(owsm_ctc["root"] / "beam"), layers=(5,), decodings=("beam:3",),
                             progress=False))  # fmt: skip
    with pytest.raises(BabelgridError, match="OWSM-CTC model: finetune trains an attention decoder"):
        load_trainer(owsm_ctc["model"])
