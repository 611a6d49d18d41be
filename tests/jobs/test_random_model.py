"""``babelgrid random-model``: a random-weight folder of every kind, written in a process where torch and
transformers cannot be imported, loads with the family's own loader and encodes real clips to finite states of every
layer; the folder is refused where it would overwrite what the job did not write; a hub error names the family's own
example and the command.
"""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.data.audio import SAMPLE_RATE, load_audio
from engine.errors import CheckpointError
from engine.models import family as fam
from engine.models.common.parallel import data_mesh
from engine.models.owsm.checkpoints import find_files as owsm_files
from engine.models.random_folder import MARKER, kinds, write_random_folder
from tests.waits import patient

REPO = pathlib.Path(__file__).resolve().parents[2]
# kind -> (family, stored layers past the blocks' count): the final norm Whisper, OWSM and Voxtral store as L + 1
EXPECTED = {
    "whisper": ("whisper", 2), "whisper-turbo": ("whisper", 2), "wav2vec2": ("wav2vec2", 1), "hubert": ("wav2vec2", 1),
    "mms": ("wav2vec2", 1), "omnilingual": ("wav2vec2", 1), "w2v-bert": ("w2vbert", 1), "seamless": ("w2vbert", 1),
    "owsm": ("owsm", 2), "powsm": ("owsm", 2), "owls": ("owsm", 2), "owsm-ctc": ("owsm", 2),
    "qwen2-audio": ("speechllm", 1),
    "voxtral": ("speechllm", 2),
    "audio-flamingo3": ("speechllm", 1), "qwen3-asr": ("speechllm", 2), "qwen3-omni": ("speechllm", 2),
    "qwen2.5-omni": ("speechllm", 1), "gemma3n": ("speechllm", 1), "gemma4": ("speechllm", 1),
    "voxtral-realtime": ("speechllm", 2),
    "parakeet": ("fastconformer", 1), "canary": ("fastconformer", 1), "cohere-asr": ("fastconformer", 1),
}  # fmt: skip
# Every kind with its defaults (2 blocks x 64, 4 heads) through the engine, then one through the command line, in a
# process that cannot import torch or transformers: the folders need neither.
WRITE_ALL = """
import json, sys
sys.modules["torch"] = sys.modules["transformers"] = None
from engine.models.random_folder import kinds, write_random_folder
from jobs.cli import main
out = sys.argv[1]
for kind in kinds():
    write_random_folder(kind, f"{out}/{kind}")
code = main(["random-model", "--kind", "canary", "--out", f"{out}/cli-canary", "--layers", "3", "--seed", "1"])
print(json.dumps({"code": code, "torch": sys.modules["torch"] is None and sys.modules["transformers"] is None}))
"""


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("random-models")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", WRITE_ALL, str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=patient(120))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"code": 0, "torch": True}, proc.stdout
    assert "next: python -m jobs.encode --model" in proc.stdout
    return out


@pytest.fixture(scope="module")
def clips(fleurs_dir) -> list[np.ndarray]:
    """Two real clips cut short, of different lengths (the batch pads the shorter)."""
    return [load_audio(fleurs_dir / "fleurs-en-000.ogg")[: int(1.5 * SAMPLE_RATE)],
            load_audio(fleurs_dir / "fleurs-de-001.ogg")[: int(2.5 * SAMPLE_RATE)]]  # fmt: skip


def test_every_kind_is_tested_and_offered_by_the_job():
    source = (REPO / "jobs" / "random_model.py").read_text()
    (job_kinds,) = [ast.literal_eval(n.value) for n in ast.parse(source).body
                    if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "KINDS"]  # fmt: skip
    assert list(kinds()) == list(job_kinds) == list(EXPECTED)
    assert all(f"babelgrid random-model --kind {k} " in (REPO / "docs" / "models.md").read_text() for k in EXPECTED)


@pytest.mark.parametrize("kind", list(EXPECTED))
def test_written_without_torch_loads_and_encodes_every_layer(kind, folders, clips):
    family, extra = EXPECTED[kind]
    folder = folders / kind
    record = json.loads((folder / MARKER).read_text())
    assert (record["kind"], record["layers"], record["width"], record["heads"]) == (kind, 2, 64, 4)
    assert fam.detect_family(folder).name == family
    encoder = fam.load_encoder(folder)
    assert (encoder.family, encoder.n_layers_out, encoder.embed) == (family, 2 + extra, 64)
    inputs, valid = [], []
    for clip in clips:
        each, frames = encoder.windows(clip, "window")
        inputs += list(each)
        valid += [int(v) for v in frames]
    layers = list(range(encoder.n_layers_out))
    step = encoder.sharded(data_mesh(jax.local_devices()), layers, jnp.float32)
    states = np.asarray(step(*encoder.collate(inputs, max(len(inputs), step.local_multiple))))
    assert states.shape[:2] == (len(layers), max(len(inputs), step.local_multiple)) and states.shape[3] == 64
    assert valid[1] > valid[0] > 0
    for row, n in enumerate(valid):
        assert np.isfinite(states[:, row, :n]).all(), f"{kind}: row {row} has non-finite states"
        assert (states[:, row, :n].std(axis=(1, 2)) > 1e-3).all(), f"{kind}: a layer of row {row} is constant"


def test_heads_load_from_the_random_folders(folders):
    """What decode reads beside the encoder: the CTC lenses' texts, OWSM's and Canary's prompts and texts, an MMS
    adapter, Whisper's v3 ids."""
    for kind in ("wav2vec2", "omnilingual", "parakeet"):
        lens = fam.FAMILIES[EXPECTED[kind][0]].ctc(folders / kind).ctc_lens()
        assert lens.text(np.array([lens.blank_id, 10, 10, lens.blank_id, 12], np.int32)).strip(), kind
    owsm = fam.FAMILIES["owsm"].decoder(folders / "owsm").loaded
    assert owsm.text([owsm.config.token_id("<sos>"), owsm.config.token_list.index("\u2581a")]) == "a"
    assert "<deu>" in owsm.config.languages() and "<st_eng>" in owsm.config.tasks()
    canary = fam.FAMILIES["fastconformer"].decoder(folders / "cli-canary").loaded
    assert len(canary.prompt("de", "en")) == 9 and canary.config.n_layer == 3 and "en" in canary.languages()
    assert canary.text([canary.token_id("<|endoftext|>"), canary.token_id("\u2581a"), canary.token_id("b")]) == "ab"
    cohere = fam.FAMILIES["fastconformer"].decoder(folders / "cohere-asr").loaded
    start = cohere.token_id("<|startoftranscript|>")  # generate's decoder start: the bos, before the processor's
    assert cohere.prompt("de", "de")[:3] == [start, cohere.token_id("\u2581"), cohere.token_id("<|startofcontext|>")]
    assert len(cohere.prompt("de", "de")) == 11 and cohere.config.memory_width == 64 and "vi" in cohere.languages()
    with pytest.raises(CheckpointError, match="only transcribes"):
        cohere.prompt("de", "en")
    assert fam.load_encoder(folders / "mms", adapter="deu").loaded.checkpoint.adapter == "deu"
    turbo = fam.FAMILIES["whisper"].decoder(folders / "whisper-turbo").loaded
    assert turbo.dims.n_text_layer == 4 and turbo.tokenizer.transcribe == 50360 and len(turbo.lang_ids) == 100


def test_powsm_and_owsm_ctc_run_their_own_heads(folders, clips):
    """POWSM's folder is POWSM's (a 20 s window, 8x subsampling, the phone task) and its decoder prompts ``<pr>``;
    OWSM-CTC's has no decoder, and its encoder runs with a task's prefix (``ctc_forward``) into its interior and final
    CTC heads, which decode takes through ``OwsmCtcDecoder``."""
    powsm = fam.FAMILIES["owsm"].decoder(folders / "powsm")
    c = powsm.loaded.config
    assert "phones" in powsm.caps.tasks and (c.frontend.speech_seconds, c.subsampling, c.n_mels) == (20, 8, 128)
    assert c.token_list[c.timestamp_range[1]] == "<20.00>" and powsm.prompt("phones", "<deu>")[2] == c.token_id("<pr>")
    assert powsm.loaded.text([c.token_id("/pʰ/"), c.token_id("\u2581a")]) == "/pʰ/ a"
    windows = powsm.windows(clips[0], "window")
    ids, n = powsm.loaded.greedy(powsm.loaded.encode(np.stack(windows))[-1], "<deu>", "<pr>", max_tokens=4)
    assert np.asarray(ids).shape == (len(windows), 4) and 0 <= int(n[0]) <= 4

    ctc = fam.FAMILIES["owsm"].decoder(folders / "owsm-ctc")
    c = ctc.loaded.config
    assert ctc.loaded.decoder is None and c.ctc.interctc_layers == (1,) and c.ctc.cross_attention == (1,)
    assert (c.subsampling, c.n_mels, c.frontend.speech_seconds) == (8, 128, 30) and c.token_list[4] == "<nolang>"
    assert ctc.caps.tasks == ("transcribe", "translate")
    batch = np.stack(ctc.windows(clips[0], "window"))
    states = np.asarray(ctc.loaded.ctc_forward(batch, "<deu>", "<st_eng>"))
    assert states.shape == (c.n_layers_out, len(batch), 2 + c.n_frames, 64) and np.isfinite(states).all()
    (memory, valid), *_ = [(m, v) for _, m, v in ctc.memories(batch, [(1, False)])]
    tokens, avg, langs = ctc.search(memory, valid, "translate", ["deu"], None)
    assert len(tokens) == len(batch) and np.isfinite(avg).all() and langs == ["deu"] * len(batch)


def test_an_out_it_did_not_write_is_never_touched(tmp_path):
    mine = write_random_folder("parakeet", tmp_path / "p", seed=3)
    again = write_random_folder("parakeet", tmp_path / "q", seed=3)
    weights = "model.safetensors"
    assert (mine.folder / weights).read_bytes() == (again.folder / weights).read_bytes()  # a seed is reproducible
    with pytest.raises(FileExistsError, match="is not empty"):
        write_random_folder("parakeet", mine.folder)
    replaced = write_random_folder("owsm", mine.folder, seed=4, force=True)
    assert fam.detect_family(replaced.folder).name == "owsm" and not (replaced.folder / weights).exists()
    (replaced.folder / "meta.yaml").unlink()  # a recipe folder: the one config.yaml with its weights beside it
    assert owsm_files(replaced.folder)[1].name == "valid.acc.ave.safetensors"
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="did not write"):
        write_random_folder("parakeet", theirs, force=True)
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]
    with pytest.raises(FileExistsError, match="is a file"):
        write_random_folder("parakeet", theirs / "notes.txt")
    with pytest.raises(ValueError, match="not a multiple of heads"):
        write_random_folder("canary", tmp_path / "c", width=60, heads=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p", "q", "theirs"]  # no half-written folder left


@pytest.mark.parametrize(
    "repo, example, kind",
    [
        ("Qwen/Qwen2-Audio-7B-Instruct", "/path/to/Qwen2-Audio-7B-Instruct", "qwen2-audio"),
        ("mistralai/Voxtral-Mini-3B-2507", "/path/to/Voxtral-Mini-3B-2507", "voxtral"),
        ("Qwen/Qwen3-ASR-1.7B", "/path/to/Qwen3-ASR-1.7B", "qwen3-asr"),
        ("Qwen/Qwen3-Omni-30B-A3B-Instruct", "/path/to/Qwen3-Omni-30B-A3B-Instruct", "qwen3-omni"),
        ("Qwen/Qwen2.5-Omni-7B", "/path/to/Qwen2.5-Omni-7B", "qwen2.5-omni"),
        ("google/gemma-3n-E2B-it", "/path/to/gemma-3n-E2B-it", "gemma3n"),
        ("google/gemma-4-E4B-it", "/path/to/gemma-4-E4B-it", "gemma4"),
        ("mistralai/Voxtral-Mini-4B-Realtime-2602", "/path/to/Voxtral-Mini-4B-Realtime-2602", "voxtral-realtime"),
        ("nvidia/parakeet-ctc-0.6b", "/path/to/parakeet-ctc-0.6b", "parakeet"),
        ("nvidia/canary-1b-v2", "/path/to/canary-1b-v2", "canary"),
        ("CohereLabs/cohere-transcribe-03-2026", "/path/to/cohere-transcribe-03-2026", "cohere-asr"),
        ("facebook/seamless-m4t-v2-large", "/path/to/seamless-m4t-v2-large", "seamless"),
        ("facebook/mms-1b-all", "hf download facebook/mms-1b-all", "mms"),
        ("espnet/owsm_v3.1_ebf_base", "/path/to/owsm_v3.1_ebf_base", "owsm"),
        ("espnet/powsm", "/path/to/powsm", "powsm"),
        ("espnet/owsm_ctc_v4_1B", "/path/to/owsm_ctc_v4_1B", "owsm-ctc"),
        ("espnet/owls_1B_180K", "/path/to/owls_1B_180K", "owls"),
        ("openai/whisper-large-v3-turbo", "/path/to/whisper-large-v3-turbo", "whisper-turbo"),
        ("someone/my-model", "took 'someone/my-model' for a Whisper model", "whisper"),
    ],
)
def test_a_hub_error_names_the_family_s_own_example(repo, example, kind, monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants, errors

    def unreachable(*args, **kwargs):
        raise errors.LocalEntryNotFoundError("not in the cache")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *args, **kwargs: None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError) as error:
        fam.load_encoder(repo)
    message = str(error.value)
    assert example in message and f"babelgrid random-model --kind {kind} --out DIR" in message, message
    assert kind.startswith("whisper") or "whisper" not in message, message


# One kind per family and attention layout (the kinds of a family share its model code): Voxtral attends over the whole
# window, Qwen2-Audio masks the keys past the valid frames, Qwen3-ASR attends within 8 s windows (a mask per row
# repeated over each row's windows), Gemma 4 within chunks of 12 frames over the 12 before (USM's chunked attention),
# Voxtral Realtime causally within a sliding window of 750 frames.
MASKED_KINDS = ("whisper", "wav2vec2", "w2v-bert", "owsm", "owls", "qwen2-audio", "voxtral", "qwen3-asr", "gemma4",
                "voxtral-realtime", "parakeet")  # fmt: skip


@pytest.mark.parametrize("kind", MASKED_KINDS)
def test_head_masked_encoder_of_every_family(kind, folders, clips):
    """The heads job's forward pass (``Encoder.head_masked``): all ones is the plain encoder; a mask per row gives each
    row what that mask alone gives it; ablating a head of block 2 leaves the layers below it alone and moves the ones
    above; the mask's gradient is finite and nonzero (what gradient importance reads)."""
    encoder = fam.load_encoder(folders / kind)
    inputs = [encoder.windows(clip, "window")[0][0] for clip in clips]
    layers = list(range(encoder.n_layers_out))
    batch = encoder.collate(inputs, 2)
    plain = np.asarray(encoder.sharded(data_mesh(jax.local_devices()[:1]), layers, jnp.float32)(*batch))
    masked = encoder.head_masked(layers)
    ones = np.ones((masked.blocks, masked.heads), np.float32)
    np.testing.assert_allclose(masked(batch, np.stack([ones, ones])), plain, rtol=1e-5, atol=1e-5 * np.abs(plain).max())
    off = ones.copy()
    off[1, 2] = 0
    rows = masked(batch, np.stack([ones, off]))
    alone = masked(batch, np.stack([off, off]))  # one compiled shape: a mask per row throughout
    np.testing.assert_allclose(rows[:, 0], plain[:, 0], rtol=1e-5, atol=1e-5 * np.abs(plain).max())
    np.testing.assert_allclose(rows[:, 1], alone[:, 1], rtol=1e-5, atol=1e-5 * np.abs(plain).max())
    np.testing.assert_array_equal(alone[:2], plain[:2])  # the stem and block 1 come before the ablated head
    assert np.abs(alone[2] - plain[2]).max() > 1e-4
    fn = masked.function()
    # One compiled gradient. Run eagerly, it compiled each operation alone: parakeet's test made 249 compiles, 28 s.
    loss = jax.jit(jax.grad(lambda m, params, *inputs: jnp.sum(fn(params, m, *inputs)[-1] ** 2)))
    grad = loss(jnp.asarray(ones), masked.params, *batch)
    assert np.isfinite(grad).all() and np.abs(np.asarray(grad)[1]).max() > 0


@pytest.mark.parametrize("kind", ["whisper", "wav2vec2", "mms"])
def test_head_masked_resumes_from_a_block(kind, folders, clips):
    """``HeadMasked.resumed``: the blocks from ``first`` on, given the input of block ``first``, equal the whole pass
    under the same masks on every valid frame (what the heads job's passes share)."""
    encoder = fam.load_encoder(folders / kind)
    inputs, frames = zip(*(encoder.windows(clip, "window") for clip in clips), strict=True)
    batch = encoder.collate([i[0] for i in inputs], 2)
    layers = list(range(encoder.n_layers_out))
    masked = encoder.head_masked(layers)
    masks = np.ones((2, masked.blocks, masked.heads), np.float32)
    masks[0, 1, 0] = masks[1, 1, 3] = 0
    whole = masked(batch, masks)
    x = masked.with_layers((1,))(batch, np.ones_like(masks))[0]
    upper = masked.resumed(2, x, batch, masks)
    for r, n in enumerate(int(f[0]) for f in frames):
        got, want = upper[:, r, :n], whole[2:, r, :n]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
