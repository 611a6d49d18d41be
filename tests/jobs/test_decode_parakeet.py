"""decode on a Parakeet-CTC store: the per-layer CTC logit lens through the jobs, against transformers at every layer.

Model: a random ``ParakeetForCTC`` (width 32, 2 blocks, as tests/jobs/test_fastconformer_jobs.py's; parity at real
widths is tests/models/fastconformer/test_fastconformer.py's) with a real tokenizer: a SentencePiece BPE model of 160
pieces trained on the FLEURS sample's transcripts, converted by transformers' own ``ParakeetConverter`` (what the hub's
``tokenizer.json`` is made with) and saved by ``ParakeetTokenizer.save_pretrained``, ``<pad>`` added at id 160 as the
blank (``pad_token_id`` = 160, ``vocab_size`` = 161), as the hub's CTC checkpoints have it. Weight matrices are drawn
with variance 1 / fan_in (transformers' 0.02 leaves every frame's states nearly alike and the argmax constant), the
head's bias zero but the blank's (+2), so that blanks (11% to 80% of a clip's frames at a layer), repeats and tokens
all occur (checked: a test whose texts were all empty could not fail).

Clips: tests/jobs/test_families.py's four real FLEURS clips (fr, pt; 7 to 10 s), encoded by ``jobs.encode`` and
decoded by ``jobs.decode`` (every stored layer, 0..2). Reference, per clip and layer k: transformers'
``ParakeetForCTC`` on ``ParakeetFeatureExtractor``'s features with ``output_hidden_states=True``, its ``ctc_head`` on
``hidden_states[k]``, argmax over the valid frames, ``ParakeetProcessor.batch_decode(ids, skip_special_tokens=True)``
(grouping, blank dropped, detokenised). Bound: the texts and emitted-token counts are equal exactly. The head on the
stored states differs from transformers' logits by up to 2.4e-4 of their peak (the NumPy log-mel against
torch.stft's, amplified by these larger weights), so an exact text is only meaningful where no frame is near a tie:
the test requires every frame's top-2 gap (transformers') to be at least 10x that frame's largest logit difference
(2x guarantees the same argmax), measured 19.6 at the worst frame for the weights' seed 18 (chosen among seeds for
that margin: at seed 1 a frame is at 2.4x).
"""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import sentencepiece as spm  # test-only, as ESPnet's reference (the Makefile installs it)
import torch
import transformers

from engine.data.audio import load_audio
from engine.errors import CheckpointError
from engine.models.fastconformer.loaded import load_fastconformer
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.runtime.options import configure
from engine.stores.reader import open_store
from tests.jobs.test_families import LANGS, PAIRS, family_clips

PIECES = 160  # SentencePiece pieces; the blank <pad> is id PIECES
BLANK_BIAS = 2.0  # the blank wins 11% to 80% of a clip's frames at a layer
SEED = 18  # of the weights: no near-tie (test docstring)
GAP = 10  # each frame's top-2 gap of transformers' logits, in units of that frame's largest |ours - theirs|
ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
               subsampling_conv_channels=8)  # fmt: skip


def write_tokenizer(folder, fleurs_dir) -> transformers.ParakeetTokenizer:
    """A Parakeet tokenizer as the hub's are made: SentencePiece BPE -> ``ParakeetConverter`` -> ``tokenizer.json``."""
    from transformers.convert_slow_tokenizer import ParakeetConverter

    texts = [p.read_text().strip() for p in sorted(fleurs_dir.glob("*.txt"))]
    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts), model_writer=buffer, model_type="bpe",
                                   vocab_size=PIECES, character_coverage=1.0, minloglevel=2)  # fmt: skip
    model_file = folder / "tokenizer.model"
    model_file.write_bytes(buffer.getvalue())
    backend = ParakeetConverter(str(model_file)).converted()
    model_file.unlink()  # the hub folder has tokenizer.json only
    tokenizer = transformers.ParakeetTokenizer(tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>")
    assert tokenizer.pad_token_id == PIECES, tokenizer.pad_token_id
    tokenizer.save_pretrained(folder)
    return tokenizer


@pytest.fixture(scope="module")
def parakeet_run(fleurs_dir, run_job, tmp_path_factory):
    """(torch model, processor, run folder) after encode and decode."""
    root = tmp_path_factory.mktemp("parakeet-decode")
    folder = root / "model"
    folder.mkdir()
    tokenizer = write_tokenizer(folder, fleurs_dir)
    torch.manual_seed(0)
    config = transformers.ParakeetCTCConfig(encoder_config=ENCODER, vocab_size=PIECES + 1, pad_token_id=PIECES)
    model = transformers.ParakeetForCTC(config).eval()
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():  # weights of variance 1 / fan_in, so that frames differ; vectors perturbed
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0, p[0].numel() ** -0.5, generator=gen)
            else:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        model.ctc_head.bias.zero_()
        model.ctc_head.bias[PIECES] = BLANK_BIAS
    model.save_pretrained(folder)
    processor = transformers.ParakeetProcessor(transformers.ParakeetFeatureExtractor(), tokenizer)
    (root / "clips").mkdir()
    clips = family_clips(fleurs_dir, root / "clips")
    store, out = root / "store", root / "decode"
    # encode in this process (the encode job's library call): the decode job, through its flags, is what is tested
    run_encode(configure(EncodeConfig, model=str(folder), dataset=f"folder:{clips}", out=str(store), progress=False))
    proc = run_job("decode", "--store", str(store), "--model", str(folder), "--out", str(out))
    assert "decoded 12 utterance-parts" in proc.stdout, proc.stdout
    return model, processor, root


def _reference(model, processor, audio):
    """Per layer k: (best ids over the valid frames, logits f32[frame, vocab]) of transformers' head on
    ``hidden_states[k]``."""
    x = processor.feature_extractor(audio, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        encoded = model.encoder(x["input_features"], attention_mask=x["attention_mask"], output_hidden_states=True)
        frames = int(encoded.attention_mask.sum())
        logits = [model.ctc_head(h)[0, :frames].numpy() for h in encoded.hidden_states]
        own = model(input_features=x["input_features"], attention_mask=x["attention_mask"]).logits
    assert np.array_equal(logits[-1], own[0, :frames].numpy())  # the top layer's are ParakeetForCTC's own
    return logits


def test_every_layer_is_transformers_greedy_ctc(parakeet_run, fleurs_dir):
    model, processor, root = parakeet_run
    table = pq.read_table(root / "decode" / "hypotheses.parquet").to_pandas()
    assert set(table["layer"]) == {0, 1, 2} and (table["decoding"] == "ctc").all() and (~table["ln_post"]).all()
    loaded, reader = load_fastconformer(root / "model"), open_store(str(root / "store"))
    blanks, repeats, worst = 0, 0, np.inf
    for uid, stems in PAIRS.items():
        for lang, stem in zip(LANGS, stems, strict=True):
            audio = load_audio(fleurs_dir / f"{stem}.ogg")
            for layer, theirs in enumerate(_reference(model, processor, audio)):
                ids = theirs.argmax(-1)
                expected = processor.batch_decode(ids[None], skip_special_tokens=True)[0]
                row = table[(table["language"] == lang) & (table["id"] == uid) & (table["layer"] == layer)]
                assert len(row) == 1, (lang, uid, layer)
                assert row["hypothesis"].iloc[0] == expected, (lang, uid, layer, row["hypothesis"].iloc[0], expected)
                emitted = ids[np.r_[True, ids[1:] != ids[:-1]]]
                assert int(row["n_tokens"].iloc[0]) == int(np.sum(emitted != PIECES))
                # ours from the stored states: the same ids, each frame's top-2 gap far above the logits' difference
                ours = np.asarray(loaded.ctc_logits(reader.states(lang, uid, layer)[None]))[0]
                top2 = np.sort(theirs, -1)[:, -2:]
                margin = float(((top2[:, 1] - top2[:, 0]) / np.abs(ours - theirs).max(-1)).min())
                assert np.array_equal(ours.argmax(-1), ids) and margin >= GAP, (lang, uid, layer, margin)
                worst = min(worst, margin)
                blanks += int(np.sum(ids == PIECES))
                repeats += int(np.sum(ids[1:] == ids[:-1]))
                assert expected, (lang, uid, layer)  # no empty text
    assert blanks > 0 and repeats > 0, (blanks, repeats)
    print(f"smallest top-2 gap / that frame's largest logit difference: {worst:.1f}")


def test_texts_equal_the_tokenizer_on_any_ids(parakeet_run):
    """The family's tokenizer against ``ParakeetProcessor.batch_decode`` on random id runs holding every special
    token (``<unk>``, ``<s>``, ``</s>``, the blank) and repeats."""
    _, processor, root = parakeet_run
    lens = load_fastconformer(root / "model").ctc_lens()
    rng = np.random.default_rng(0)
    for _ in range(200):
        ids = rng.integers(0, PIECES + 1, rng.integers(1, 40))
        ids = np.repeat(ids, rng.integers(1, 3, len(ids)))
        assert lens.text(ids) == processor.batch_decode(ids[None], skip_special_tokens=True)[0], ids.tolist()


def test_a_folder_without_tokenizer_is_refused(parakeet_run, tmp_path):
    _, _, root = parakeet_run
    folder = tmp_path / "model"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        (folder / name).symlink_to(root / "model" / name)
    with pytest.raises(CheckpointError, match="has no tokenizer.json"):
        load_fastconformer(folder).ctc_lens()
    assert json.loads((root / "model" / "config.json").read_text())["pad_token_id"] == PIECES
