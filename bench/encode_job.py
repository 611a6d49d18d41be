"""Benchmark: the encode job end to end against its two halves, measured in one run.

  (a) the encoder alone on the same fixed-size batches (device step + copy to host: np.asarray of the result),
  (p) the same, each batch's copy into pinned host memory started at dispatch, as the job does
      (``engine.pipelines.encode.transfers.start_to_host``),
  (b) the store writes alone (the same states, written and committed),
  (c) the whole job (`engine.pipelines.encode.run.run_encode`: audio decoding, log-mel, encoder, writes).

Goal: (c) within 1.1x of max(min(a, p), b) (issue 80; 1.15x before), i.e. decoding and writing hide behind the
encoder. Prints
MB/s written and audio seconds per second. Inputs: the real FLEURS clips when
../shared/data/fleurs-sample exists (else the demo set), the packaged whisper-base, every layer.

Usage: python bench/encode_job.py [--dtype float32] [--batch 8] [--repeats 3] [--record bench/RESULTS.md]
       python bench/encode_job.py --model FOLDER --noise 2x16x20 --dtype bfloat16 --batch 16   # a GPU: any model,
           no speech needed (2 languages x 16 clips of 20 s of noise; bench/gpu.py's encoder section names the folder)
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from bench.common import Run, record  # noqa: E402
from engine.data import audio as audio_lib  # noqa: E402
from engine.data.sources import get_source  # noqa: E402
from engine.models.common.parallel import ShardedEncoder, data_mesh  # noqa: E402
from engine.models.whisper import features as whisper_features  # noqa: E402
from engine.models.whisper.encoder import WhisperEncoder  # noqa: E402
from engine.models.whisper.features import features_for_audio  # noqa: E402
from engine.models.whisper.loaded import load_whisper  # noqa: E402
from engine.models.whisper.parallel import SIGNATURE  # noqa: E402
from engine.pipelines.encode.config import EncodeConfig  # noqa: E402
from engine.pipelines.encode.run import run_encode  # noqa: E402
from engine.pipelines.encode.transfers import start_to_host  # noqa: E402
from engine.runtime.options import configure  # noqa: E402
from engine.stores.layers import LayerStore  # noqa: E402
from engine.stores.schema import StoreInfo  # noqa: E402
from engine.stores.utterances import UtteranceRow  # noqa: E402

SAMPLE = REPO.parent / "shared" / "data" / "fleurs-sample"


def dataset_spec(tmp: pathlib.Path, noise: str | None = None) -> str:
    if noise:  # LANGSxCLIPSxSECONDS of low noise as 16 kHz WAV: the shapes of speech, where there is none
        import soundfile

        langs, clips, seconds = (int(v) for v in noise.split("x"))
        rng = np.random.default_rng(0)
        for lang in ("de", "en", "es", "fr", "it", "pl", "sv", "tr")[:langs]:
            (tmp / "noise" / lang).mkdir(parents=True, exist_ok=True)
            for c in range(clips):
                audio = (0.01 * rng.standard_normal(seconds * 16000)).astype(np.float32)
                soundfile.write(tmp / "noise" / lang / f"s{c:03d}.wav", audio, 16000)  # one id per sentence
        return f"folder:{tmp / 'noise'}"
    if SAMPLE.is_dir():
        root = tmp / "clips"
        for clip in sorted(SAMPLE.glob("*.ogg")):
            lang = clip.stem.split("-")[1]
            (root / lang).mkdir(parents=True, exist_ok=True)
            shutil.copy(clip, root / lang / clip.name)
        return f"folder:{root}"
    return "demo"


class Prepared:
    """The bench's inputs, decoded once: the model, the dataset's windows, ``encode_all()`` (the encoder alone on
    fixed-size batches, to the host) and each utterance's states as the job writes them (``per_utt``)."""

    def __init__(self, tmp: pathlib.Path, batch: int, dtype: str, model: str | None = None, noise: str | None = None):
        self.whisper = whisper = load_whisper(model, dtype=jnp.dtype(dtype))
        dims = whisper.dims
        self.layers = tuple(range(dims.n_audio_layer + 2))
        self.spec = dataset_spec(tmp, noise)
        source = get_source(self.spec)
        self.languages = source.languages()
        self.utts = [(lang, u) for lang in source.languages() for u in source.utterances(lang)]
        self.audio_s = 0.0
        prepared = []
        for lang, utt in self.utts:
            audio = utt.load()
            self.audio_s += len(audio) / audio_lib.SAMPLE_RATE
            mel, frames = features_for_audio(audio, dims.n_mels)
            prepared.append((lang, utt, np.asarray(mel), np.asarray(frames)))
        windows = np.concatenate([m for _, _, m, _ in prepared])
        self.n_windows = len(windows)
        n_batches = -(-len(windows) // batch)
        padded = np.concatenate(
            [windows, np.full((n_batches * batch - len(windows), *windows.shape[1:]), windows.min(), np.float32)]
        )
        encoder = ShardedEncoder(whisper.model, SIGNATURE, data_mesh(jax.local_devices()), layers=self.layers,
                                 out_dtype=jnp.dtype(dtype))  # fmt: skip

        def encode_all(to_host=lambda x: x):
            outs, pending = [], None
            for b in range(n_batches):
                result = to_host(encoder(padded[b * batch : (b + 1) * batch]))
                if pending is not None:
                    outs.append(np.asarray(pending))
                pending = result
            outs.append(np.asarray(pending))
            return np.concatenate(outs, axis=1)

        self.encode_all = encode_all
        self.encode_pinned = lambda: encode_all(start_to_host)
        states = encode_all()  # compile

        # Per-utterance states, exactly what the job writes.
        self.per_utt, row = [], 0
        for lang, utt, mel, frames in prepared:
            parts = [states[:, row + w, : int(frames[w])] for w in range(len(mel))]
            self.per_utt.append((lang, utt, np.concatenate(parts, axis=1)))
            row += len(mel)
        self.nbytes = sum(s.nbytes for _, _, s in self.per_utt)
        self.info = StoreInfo(whisper.checkpoint.name, whisper.checkpoint.sha256, dims, self.layers, dtype)

    def write_all(self, url: str) -> None:
        """Every utterance's states through ``LayerStore`` into ``url``, as the encode job writes them."""
        store = LayerStore.create_or_open(url, self.info)
        by_lang: dict[str, list] = {}
        for lang, utt, s in self.per_utt:
            by_lang.setdefault(lang, []).append((utt, s))
        for lang, items in by_lang.items():
            rows = [
                UtteranceRow(
                    id=u.id,
                    lang=lang,
                    path=u.path,
                    duration_s=s.shape[1] / whisper_features.ENCODER_FRAMES_PER_SECOND,
                    n_frames=s.shape[1],
                    n_windows=-(-s.shape[1] // whisper_features.N_ENCODER_FRAMES),
                    recording=u.recording,
                )
                for u, s in items
            ]
            arrays = store.language(lang, rows, max(r.n_frames for r in rows))
            for i, (_, s) in enumerate(items):
                arrays.write_utterance(i, s)
            arrays.flush()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--record", type=pathlib.Path, default=None)
    parser.add_argument("--model", default=None, help="a model folder (default: the packaged whisper-base)")
    parser.add_argument("--noise", default=None, help="LANGSxCLIPSxSECONDS of noise clips instead of speech")
    args = parser.parse_args()
    run = Run()

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="bench-encode-job-"))
    try:
        p = Prepared(tmp, args.batch, args.dtype, args.model, args.noise)
        whisper, spec, utts, audio_s, nbytes, layers = p.whisper, p.spec, p.utts, p.audio_s, p.nbytes, p.layers
        encode_all, windows = p.encode_all, range(p.n_windows)

        def write_all(out: pathlib.Path):
            p.write_all(str(out))

        # The FLEURS sample's clips are different sentences per language: nothing to pair, which the job refuses.
        config = dict(dataset=spec, dtype=args.dtype, compute_dtype=args.dtype, batch_size=args.batch, progress=False,
                      allow_unpaired=True, **({"model": args.model} if args.model else {}))  # fmt: skip
        run_encode(
            configure(EncodeConfig, out=str(tmp / "warm"), langs=(p.languages[0],), **config),
            encoder=WhisperEncoder(whisper),
        )
        # Interleaved rounds: a slow spell of a shared machine hits all three stages of that round alike.
        p.encode_pinned()  # its transfers compiled
        t_enc, t_pinned, t_write, t_job = [], [], [], []
        for r in range(args.repeats):
            t = time.perf_counter()
            encode_all()
            t_enc.append(time.perf_counter() - t)
            t = time.perf_counter()
            p.encode_pinned()
            t_pinned.append(time.perf_counter() - t)
            out = tmp / f"writes-{r}"
            t = time.perf_counter()
            write_all(out)
            t_write.append(time.perf_counter() - t)
            shutil.rmtree(out)
            out = tmp / f"job-{r}"
            t = time.perf_counter()
            summary = run_encode(configure(EncodeConfig, out=str(out), **config), encoder=WhisperEncoder(whisper))
            t_job.append(time.perf_counter() - t)
            assert summary.done == len(utts) and summary.n_skipped == 0, summary.report()
            shutil.rmtree(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    enc, pinned, wr, job = (statistics.median(t) for t in (t_enc, t_pinned, t_write, t_job))
    lines = [
        run.line(),
        f"command: python bench/encode_job.py --dtype {args.dtype} "
        f"--batch {args.batch} --repeats {args.repeats}"
        + (f" --model <random folder> --noise {args.noise}" if args.model else ""),
        f"{len(utts)} utterances ({audio_s:.0f} s of audio, {len(windows)} windows) from {spec.split(':')[0]}, "
        f"{whisper.checkpoint.name}, all {len(layers)} layers computed and stored as {args.dtype} ({nbytes / 1e6:.0f} "
        "MB of valid states); "
        f"median of {args.repeats} interleaved rounds",
        "",
        "| stage | s | audio s/s | MB/s written |",
        "| --- | ---: | ---: | ---: |",
        f"| (a) encoder alone, same batches, to host | {enc:.2f} | {audio_s / enc:.1f} | |",
        f"| (p) encoder alone, to pinned host at dispatch | {pinned:.2f} | {audio_s / pinned:.1f} | |",
        f"| (b) store writes alone | {wr:.2f} | | {nbytes / wr / 1e6:.0f} |",
        f"| (c) whole job | {job:.2f} | {audio_s / job:.1f} | {nbytes / job / 1e6:.0f} |",
        "",
        f"- job / max(encoder, writes) = **{job / max(min(enc, pinned), wr):.2f}** (goal <= 1.1; the encoder by its "
        "faster copy, (a) or (p))",
    ]
    text = "\n".join(lines)
    print(text)
    if args.record:
        record(args.record, f"encode job ({args.dtype})", text)


if __name__ == "__main__":
    main()
