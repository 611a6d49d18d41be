"""decode with 2 ``jax.distributed`` processes on the paths other than Whisper's: an OWSM store (its decoder and its
CTC lens) and a wav2vec2 ``*ForCTC`` store (the CTC lens). The processes claim units through the output store
(``engine.pipelines.decode.store.decode_claimed``: one language each for OWSM, one (language, layer) for CTC), as
Whisper's decode does (``tests/jobs/test_scaleout.py``), and process 0 merges: every file of the output equals the
1-process output's, byte for byte, and the two processes together decoded each utterance-part once.
"""

from __future__ import annotations

import re

import pytest
import torch
import transformers

from engine.pipelines.decode.config import DecodeConfig
from engine.pipelines.decode.run import run_decode
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.runtime.options import configure
from tests.jobs.manifests import write_fleurs_manifest
from tests.jobs.multiprocess import run_processes
from tests.models.owsm import owsm_reference as ref
from tests.models.wav2vec2.w2v_reference import write_vocab

CTC_CLIPS = ("en-000", "en-001", "de-000")
OWSM_PAIRS = {"a": ("fleurs-fr-005", "fleurs-pt-002"), "b": ("fleurs-fr-000", "fleurs-pt-007")}
OWSM_LANGS = ("fr", "pt")


def _decoded(stdout: str) -> int:
    return int(re.search(r"decoded (\d+) utterance-parts", stdout).group(1))


def _same_outputs(one, two) -> None:
    """Every file of the 1-process output is in the 2-process one with the same bytes, and no other is."""
    files = sorted(p.relative_to(one) for p in one.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(two) for p in two.rglob("*") if p.is_file())
    differ = [str(f) for f in files if (one / f).read_bytes() != (two / f).read_bytes()]
    assert not differ, f"files that differ between 1 and 2 processes: {differ}"


def _one_and_two(root, args: list[str], **settings) -> None:
    """``args``, the decode job's flags, in two processes; the 1-process reference through the job's library call
    with the same ``settings``, in this process (a job's start-up fewer; any difference between the two routes
    fails the byte comparison too)."""
    one = run_decode(configure(DecodeConfig, out=str(root / "one"), progress=False, **settings)).report()
    # Each part takes half a second at least, so that the second process still finds units to claim when it starts.
    outputs = run_processes("jobs.decode", [*args, "--out", str(root / "two"), "--progress=false"],
                            env_extra={"BABELGRID_FAULT_DELAY": "before_part:0.5"})  # fmt: skip
    assert sum(_decoded(o) for o in outputs) == _decoded(one), outputs  # each part decoded once
    assert all(_decoded(o) > 0 for o in outputs), outputs  # both processes took units
    _same_outputs(root / "one", root / "two")


def test_ctc_decode_with_two_processes_equals_one(fleurs_dir, tmp_path):
    torch.manual_seed(0)
    config = transformers.Wav2Vec2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, conv_dim=(32,) * 7,
        num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4, vocab_size=40, pad_token_id=0,
    )  # fmt: skip
    model = transformers.Wav2Vec2ForCTC(config).eval()
    with torch.no_grad():  # a head whose argmax moves from frame to frame, so that the texts are not all blank
        model.lm_head.weight.normal_(0, 2.0)
    model.save_pretrained(tmp_path / "model")
    write_vocab(tmp_path / "model", 40)
    manifest = write_fleurs_manifest(tmp_path / "clips.jsonl", fleurs_dir, CTC_CLIPS)
    store = tmp_path / "store"
    run_encode(configure(EncodeConfig, model=str(tmp_path / "model"), dataset=f"manifest:{manifest}", out=str(store),
                         allow_unpaired=True, progress=False))  # fmt: skip
    _one_and_two(tmp_path, ["--store", str(store), "--model", str(tmp_path / "model")], store=str(store),
                 model=str(tmp_path / "model"))  # fmt: skip


@pytest.mark.slow
def test_owsm_decode_with_two_processes_equals_one(fleurs_dir, tmp_path):
    model = ref.write_model(tmp_path / "model", fleurs_dir, narrow=True)
    clips = tmp_path / "clips"
    for uid, stems in OWSM_PAIRS.items():
        for lang, stem in zip(OWSM_LANGS, stems, strict=True):
            (clips / lang).mkdir(parents=True, exist_ok=True)
            for ext in (".ogg", ".txt"):
                (clips / lang / f"{uid}{ext}").symlink_to(fleurs_dir / f"{stem}{ext}")
    store = tmp_path / "store"
    run_encode(configure(EncodeConfig, model=str(model), dataset=f"folder:{clips}", out=str(store), progress=False))
    args = ["--store", str(store), "--model", str(model), "--layers", "1,3", "--tasks", "transcribe",
            "--max_new_tokens", "6", "--batch_size", "3", "--decoding", "greedy,ctc"]  # fmt: skip
    _one_and_two(tmp_path, args, store=str(store), model=str(model), layers=(1, 3), tasks=("transcribe",),
                 max_new_tokens=6, batch_size=3, decodings=("greedy", "ctc"))  # fmt: skip
