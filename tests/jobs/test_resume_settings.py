"""Settings that change bytes are compared on every resume and every worker join, with no lease live (issue 82, F2).

A seqsim rerun with another ``--dtype`` wrote bfloat16 matrices beside float32 ones; a requeued ``--worker`` with
another dtype, after the dead worker's lease had expired, did the same; an encode resumed with another
``--batch_size`` wrote chunks that differ from one process's. Each case here is refused before any work, by an error
naming both values, and leaves nothing of the refused settings behind; a setting an output does not pin (sae's
``--block``) changes no byte. Kept small: the tiny random Whisper's store of
3 languages x 8 tones (``worker_store``), the cheap ``mean`` measure.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import threading
import time

import jax
import numpy as np
import pytest

from engine.models.whisper.encoder import WhisperEncoder
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.pipelines.seqsim.config import SimilarityConfig
from engine.pipelines.seqsim.run import run_similarity
from engine.runtime.lease import OPEN, WORKERS
from engine.runtime.options import configure
from engine.stores.records import json_bytes
from engine.stores.similarity import SimilarityMismatchError
from engine.stores.utterances import StoreMismatchError
from kernels.settings import OtConfig


def expired_worker_lease(folder: pathlib.Path, job: str) -> None:
    """The lease a killed ``--worker`` of ``job`` left, expired a minute ago: nothing live to compare with."""
    now = time.time()
    record = {"owner": "d" * 32, "host": "another-host", "pid": 4242, "job": job, "mode": WORKERS, "state": OPEN,
              "settings": {"format": f"babelgrid-{job}"}, "renewed": "2026-11-25T00:00:00",
              "expires": "2026-11-25T00:01:00", "expires_unix": now - 60}  # fmt: skip
    (folder / "lease.json").write_text(json.dumps(record))


def markers(out: pathlib.Path, measure: str = "mean") -> dict[str, str]:
    """``<pair>/<layer>`` -> the dtype its done marker records, for every matrix of ``measure``."""
    return {
        f"{path.parent.parent.name}/{path.stem}": json.loads(path.read_text()).get("dtype")
        for path in sorted((out / measure).glob("*/done/*.json"))
    }


def seqsim(store, out, **settings):
    defaults = {"layers": (1,), "measures": ("mean",), "progress": False}
    return run_similarity(configure(SimilarityConfig, store=str(store), out=str(out), **{**defaults, **settings}))


def test_seqsim_resume_with_another_dtype_is_refused(worker_store, tmp_path, run_job):
    """The rerun asks one more layer in bfloat16: it was written beside the float32 matrices (rc 0, verify clean).
    Refused through the flags in one line naming both values and the way out."""
    out = tmp_path / "sim"
    seqsim(worker_store, out)
    before = markers(out)
    assert set(before.values()) == {"float32"}
    refused = run_job("seqsim", "--store", str(worker_store), "--out", str(out), "--layers", "1,2", "--measure", "mean",
                      "--dtype", "bfloat16", expect=1)  # fmt: skip
    lines = [line for line in refused.stderr.splitlines() if "dtype: store has 'float32', this run 'bfloat16'" in line]
    assert len(lines) == 1 and "--out" in lines[0] and "Traceback" not in refused.stderr, refused.stderr
    assert markers(out) == before  # no matrix of layer 2, none in bfloat16


def test_seqsim_worker_joining_after_the_lease_expired_with_another_dtype_is_refused(worker_store, tmp_path):
    """A requeued worker with another dtype, once the dead worker's lease had expired, computed what was left in
    its dtype: nothing compared it with the settings the output was written with."""
    out = tmp_path / "sim"
    seqsim(worker_store, out, worker=True)
    before = markers(out)
    expired_worker_lease(out, "seqsim")
    with pytest.raises(SimilarityMismatchError, match=r"dtype: store has 'float32', this run 'bfloat16'"):
        seqsim(worker_store, out, layers=(1, 2), dtype="bfloat16", worker=True)
    assert markers(out) == before


def test_seqsim_resume_with_other_ot_options_is_refused(worker_store, tmp_path):
    """Other Sinkhorn options make other ot matrices: recomputing the layers a rerun asks for left the others with
    the old options, one array holding two settings. More iterations only measure pairs that did not converge: a
    resume with them goes on and recomputes the layer (docs/similarity.md)."""
    out = tmp_path / "sim"
    seqsim(worker_store, out, measures=("ot",), pairs="de:en", ot=OtConfig(max_iterations=10))
    with pytest.raises(SimilarityMismatchError, match=r"ot\.epsilon: store has 0\.05, this run 0\.1"):
        seqsim(worker_store, out, measures=("ot",), pairs="de:en", layers=(1, 2),
               ot=OtConfig(epsilon=0.1, max_iterations=10))  # fmt: skip
    assert list(markers(out, "ot")) == ["de__en/1"]
    seqsim(worker_store, out, measures=("ot",), pairs="de:en", ot=OtConfig(max_iterations=20))
    marker = json.loads((out / "ot" / "de__en" / "done" / "1.json").read_text())
    assert marker["ot"]["max_iterations"] == 20


def encode(clips, out, tiny_whisper, **settings):
    config = configure(EncodeConfig, out=str(out), dataset=f"folder:{clips}", progress=False, **settings)
    return run_encode(config, encoder=WhisperEncoder(tiny_whisper))


def test_encode_resume_with_another_batch_size_is_refused(worker_clips, tiny_whisper, tmp_path):
    """XLA compiles another kernel for another batch shape, whose sums differ in their last bits: a store resumed
    with another --batch_size held chunks that one process would not have written."""
    out = tmp_path / "store"
    encode(worker_clips, out, tiny_whisper, langs=("de",), batch_size=2)
    with pytest.raises(StoreMismatchError, match=r"batch_size: store has 2, this run 4.*--out"):
        encode(worker_clips, out, tiny_whisper, langs=("de", "en"), batch_size=4)
    assert not (out / "languages" / "en.json").exists()
    assert json.loads((out / "manifest.json").read_text())["batch_size"] == 2


def test_encode_worker_joining_after_the_lease_expired_with_another_batch_size_is_refused(worker_clips, tiny_whisper,
                                                                                        tmp_path):  # fmt: skip
    out = tmp_path / "store"
    encode(worker_clips, out, tiny_whisper, langs=("de",), batch_size=2, worker=True)
    expired_worker_lease(out, "encode")
    with pytest.raises(StoreMismatchError, match=r"batch_size: store has 2, this run 4"):
        encode(worker_clips, out, tiny_whisper, langs=("de", "en"), batch_size=4, worker=True)
    assert not (out / "languages" / "en.json").exists()


def test_encode_resume_with_another_prefetch_goes_on(worker_clips, tiny_whisper, tmp_path):
    """How a run computes, not what it writes, may change on resume: --prefetch, --claim_utterances. A store
    written before the batch size was recorded resumes with any."""
    out = tmp_path / "store"
    encode(worker_clips, out, tiny_whisper, langs=("de",), batch_size=2, prefetch=1)
    summary = encode(worker_clips, out, tiny_whisper, langs=("de",), batch_size=2, prefetch=2, claim_utterances=3)
    assert summary.already_done == 8 and summary.done == 0
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["batch_size"], manifest["digest"]
    (out / "manifest.json").write_bytes(json_bytes(manifest))
    encode(worker_clips, out, tiny_whisper, langs=("de", "en"), batch_size=4)


def test_seqsim_resume_against_a_layer_store_encoded_again_at_its_path_is_refused(worker_clips, tiny_whisper,
                                                                                   tmp_path):  # fmt: skip
    """The layer store was deleted and encoded again at the same path in bfloat16: the seqsim resume compared the
    path, model and layers, all equal, and added layer 2 of the new store to layer 1's matrices of the old one.
    Refused now, naming what changed, and nothing is written; a retrieval baseline from the old store is refused."""
    from engine.pipelines.retrieval.config import RetrievalError
    from engine.pipelines.retrieval.delta import check_baseline

    store, out = tmp_path / "store", tmp_path / "sim"
    encode(worker_clips, store, tiny_whisper, langs=("de", "en"))
    seqsim(store, out)
    before, old = markers(out), json.loads((out / "manifest.json").read_text())
    assert old["layer_store_identity"]["compute_dtype"] == "float32" and old["matmul_precision"] == "highest"
    shutil.rmtree(store)
    encode(worker_clips, store, tiny_whisper, langs=("de", "en"), compute_dtype="bfloat16")
    with pytest.raises(SimilarityMismatchError, match=r"computed from another layer store than the one now at .*"
                       r"compute_dtype \(then 'float32', now 'bfloat16'\).*new --out"):  # fmt: skip
        seqsim(store, out, layers=(1, 2))
    assert markers(out) == before
    seqsim(store, tmp_path / "sim2")
    new = json.loads((tmp_path / "sim2" / "manifest.json").read_text())
    with pytest.raises(RetrievalError, match=r"--baseline .* another layer store"):
        check_baseline(new, old, str(tmp_path / "sim2"), str(out))


def test_a_resume_with_another_matmul_precision_is_refused(worker_clips, worker_store, tiny_whisper, tmp_path):
    """TF32 products (``--matmul_precision default`` on a GPU) are 1-3% from float32: neither the layer store nor the
    similarity store recorded the precision, so a resume could mix the two."""
    out = tmp_path / "store"
    encode(worker_clips, out, tiny_whisper, langs=("de",))
    assert json.loads((out / "manifest.json").read_text())["matmul_precision"] == "highest"
    with pytest.raises(StoreMismatchError, match=r"matmul_precision: store has 'highest', this run 'default'"):
        encode(worker_clips, out, tiny_whisper, langs=("de", "en"), matmul_precision="default")
    assert not (out / "languages" / "en.json").exists()
    seqsim(worker_store, tmp_path / "sim")
    with pytest.raises(SimilarityMismatchError, match=r"matmul_precision: store has 'highest', this run 'default'"):
        seqsim(worker_store, tmp_path / "sim", layers=(1, 2), matmul_precision="default")


def test_a_run_from_python_computes_at_the_precision_it_records():
    """The job scripts set JAX's precision from the flag; a run called from Python got whatever JAX had while its
    store recorded the config's. The run sets it process-wide (its threads compute too), and restores it after."""
    from engine.runtime.runs import float32_products

    seen = []
    with float32_products("default"):
        thread = threading.Thread(target=lambda: seen.append(jax.config.jax_default_matmul_precision))
        thread.start()
        thread.join()
    assert seen == ["default"] and jax.config.jax_default_matmul_precision == "highest"


class _Layer:
    """A layer store's reader with 2 languages of 20 utterances of 5-29 frames, in memory."""

    def __init__(self):
        rng = np.random.default_rng(1)
        self.n = {lang: rng.integers(5, 30, 20) for lang in ("de", "en")}
        self.states = {lang: rng.standard_normal((20, 30, 8)).astype(np.float32) for lang in self.n}

    def lengths(self, lang):
        return self.n[lang]

    def language_layer(self, lang, layer, index, dtype, frames):
        return self.states[lang][index, :frames], None


@pytest.mark.parametrize("buffer_frames", [100, 10**6])
def test_sae_block_decides_the_reads_not_the_batches(buffer_frames):
    """sae's manifest leaves out --block (utterances per store read: how, not what), yet the batches it trained on
    depended on it: a read grouped its utterances by language, and the shuffle buffer was cut only at a read's end."""
    from engine.pipelines.sae.data import Frames

    store = _Layer()

    def frames(block: int) -> np.ndarray:
        return np.concatenate(list(Frames(store, 1, ["de", "en"], block, buffer_frames, seed=0).epoch(0, batch=16)))

    one = frames(1)
    for block in (3, 8, 40):
        np.testing.assert_array_equal(frames(block), one, err_msg=f"block {block}")
