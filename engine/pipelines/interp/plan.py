"""``--plan`` for the interp job: its (language pair, layer) units, the states they read, the word-alignment kernel's
blocks, and each language's words embedded and phonemised, with their time here.

Reads the layer store's lengths and the align job's word tables (no states), with the run's own checks
(``engine.pipelines.interp.run.request``). Counts, as the run makes them (``engine.pipelines.interp.unit``):

- per language, its words in encoded utterances and the distinct ones, which the text encoder embeds and espeak-ng
  phonemises once (``inputs.load_language``);
- per (language pair, layer) unit, the utterance pairs (the parallel ones: an id with words on both sides; with
  ``--retrieved k`` about k more per query), read from the store (both sides' utterances, once each) and aligned in
  blocks of ``PAIR_BLOCK`` pairs, each padded to its longest words and frames, once per ``--pooling`` (and with
  ``--alignment ot`` the transport plan too);
- the states read, at ``READ_RATE`` (compare's figure for a local store): every stored frame of each utterance a unit
  reads, padding included (a Whisper store's 1500 a window), as ``unit_part`` reads them;
- the word pairs' rows: at most one per word of the shorter utterance (mutual best pairs), each with a phone distance
  (cached between units).

Calibration, a few seconds: the kernel (``wordalign_pairs``, and ``word_plan_pairs`` with OT) on one block of random
states at the run's largest block shape, after a first call that compiles it (a compile for each distinct block
shape of the run); the text encoder loaded and timed on ``SAMPLE_WORDS`` words, espeak-ng on as many, the phone
distance on as many word pairs. The merge, the summary's statistics and the figures are left out: seconds.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from engine.pipelines.interp.config import InterpConfig
from engine.pipelines.interp.inputs import clean_word
from engine.pipelines.interp.run import request
from engine.pipelines.interp.unit import FRAME_QUANTUM, PAIR_BLOCK, WORD_QUANTUM
from engine.runtime.devices import Device
from engine.runtime.plan import READ_RATE, SAMPLE_WORDS, Plan, Stage, call_and_word, duration, once, size
from engine.stores.words import read_words, words_language
from engine.text import phones as ph
from engine.text.encoders import load_text_encoder
from kernels.wordalign import WordPair, Words, word_plan_pairs, wordalign_pairs


def plan_interp_run(config: InterpConfig, device: Device | None = None) -> Plan:
    """The plan of ``run_interp(config)`` (module docstring); ``device`` is not modelled."""
    reader, pairs, layers = request(config)
    d = reader.info.embed
    words: dict[str, dict[str, int]] = {}  # lang -> id -> words in it
    frames: dict[str, dict[str, int]] = {}
    keys: dict[str, set] = {}
    padded: dict[str, int] = {}  # lang -> frames a read of one utterance holds
    for lang in sorted({lang for p in pairs for lang in p}):
        table = reader.utterances_table(lang).to_pydict()
        lengths = reader.lengths(lang)
        frames[lang] = {uid: int(lengths[u]) for u, uid in zip(table["utterance"], table["id"], strict=True)
                        if lengths[u] > 0}  # fmt: skip
        padded[lang] = reader.arrays(lang).max_frames
        rows = read_words(config.words, words_language(config.words, lang)).to_pydict()
        words[lang], keys[lang] = {}, set()
        for uid, word in zip(rows["id"], rows["word"], strict=True):
            key = clean_word(word)
            if uid in frames[lang] and key:
                words[lang][uid] = words[lang].get(uid, 0) + 1
                keys[lang].add(key)

    # Units: the utterance pairs, and the blocks the kernel aligns them in
    shapes: set[tuple[int, int]] = set()
    n_upairs, blocks, read_bytes, rows = 0, 0, 0.0, 0
    largest = (WORD_QUANTUM, FRAME_QUANTUM)
    for a, b in pairs:
        shared = sorted(set(words[a]) & set(words[b]))
        upairs = [(u, u) for u in shared]
        if config.retrieved:  # about k candidates per query: any of b's utterances with words
            others = sorted(words[b])
            upairs += [(u, others[(i + k + 1) % len(others)]) for i, u in enumerate(shared)
                       for k in range(min(config.retrieved, max(len(others) - 1, 0)))]  # fmt: skip
        n_upairs += len(upairs) * len(layers)
        # the unit reads each utterance's every stored frame (``language_layer`` without ``frames``: a whisper
        # store's 30 s window, 1500 frames, whatever the utterance's length)
        read = len({p[0] for p in upairs}) * padded[a] + len({p[1] for p in upairs}) * padded[b]
        read_bytes += float(read) * d * 4 * len(layers)
        rows += sum(min(words[a][u], words[b][v]) for u, v in upairs) * len(layers) * len(config.poolings)
        for first in range(0, len(upairs), PAIR_BLOCK):
            block = upairs[first : first + PAIR_BLOCK]
            w = max(max(words[a][u], words[b][v]) for u, v in block)
            f = max(max(frames[a][u], frames[b][v]) for u, v in block)
            shape = (-(-w // WORD_QUANTUM) * WORD_QUANTUM, -(-f // FRAME_QUANTUM) * FRAME_QUANTUM)
            shapes.add(shape)
            largest = max(largest, shape, key=lambda s: s[0] * s[1])
            blocks += len(layers)
    kernel_calls = blocks * len(config.poolings)

    # Calibration
    t0 = time.perf_counter()
    n_words, n_frames = largest
    rng = np.random.default_rng(0)

    def side():
        states = rng.standard_normal((PAIR_BLOCK, 1, n_frames, d)).astype(np.float32)
        edges = np.linspace(0, n_frames, n_words + 1).astype(np.int32)
        spans = np.broadcast_to(np.stack([edges[:-1], edges[1:]], 1), (PAIR_BLOCK, n_words, 2)).copy()
        full = np.full(PAIR_BLOCK, n_frames, np.int32)
        return Words(states, full, spans, np.full(PAIR_BLOCK, n_words, np.int32))

    block = WordPair(side(), side())
    threshold = np.float32(-np.inf)

    def kernel():
        out = [wordalign_pairs(block, threshold, None, pooling=pooling).cosine for pooling in config.poolings[:1]]
        if config.alignment == "ot":
            out.append(word_plan_pairs(block, None, pooling=config.poolings[0], weights=config.ot_weights,
                                       config=config.ot).plan)  # fmt: skip
        return out

    first = once(kernel)
    call = once(kernel)
    compile_seconds = max(first - call, 0.0)
    lang0 = pairs[0][0]
    sample = sorted(keys[lang0])[:SAMPLE_WORDS] or ["a"]
    started = time.perf_counter()
    encoder = load_text_encoder(config.text_encoder)
    load_seconds = time.perf_counter() - started
    embed_load, embed_call, embed = call_and_word(lambda ws: np.asarray(encoder.encode(ws)), sample)
    spoken = ph.covers(lang0)
    no = (0.0, 0.0, 0.0)
    phone_load, phone_call, phonemes = call_and_word(lambda ws: ph.phonemize_words(lang0, ws), sample) if spoken else no
    said = ph.phonemize_words(lang0, sample) if spoken else []
    distance_load = once(lambda: ph.phone_distance(said[0], said[-1])) if said else 0.0  # its tables loaded
    load_seconds += embed_load + phone_load + distance_load
    distance = once(lambda: [ph.phone_distance(said[i], said[-1 - i]) for i in range(len(said))]) / max(len(said), 1)
    calib = time.perf_counter() - t0

    n_keys = sum(len(v) for v in keys.values())
    # a row's phone distances: its random word's (drawn anew per layer and pooling) and its own (cached: the same word
    # pairs recur at every layer and pooling)
    distances = rows * (1.0 + 1.0 / (len(layers) * len(config.poolings)))
    stages = [
        Stage(
            "words: embed + phones",
            0.0,
            0.0,
            0.0,
            load_seconds + len(keys) * (embed_call + phone_call) + n_keys * (embed + phonemes),
        ),
        Stage("read states", 0.0, read_bytes, 0.0, read_bytes / READ_RATE),
        Stage("align words", 0.0, 0.0, 0.0, kernel_calls * call + len(shapes) * compile_seconds),
        Stage("rows", 0.0, 0.0, 0.0, distances * distance),
    ]
    kinds = f"parallel and about {config.retrieved} retrieved a query" if config.retrieved else "parallel"
    counts = [
        ("store", config.store),
        ("words", ", ".join(f"{lang} {sum(words[lang].values())} ({len(keys[lang])} distinct)" for lang in words)),
        ("units", f"{len(pairs)} language pairs x {len(layers)} layers = {len(pairs) * len(layers)}"),
        ("utterance pairs", f"{n_upairs} over the units ({kinds})"),
        ("kernel", f"{kernel_calls} calls ({blocks} blocks of at most {PAIR_BLOCK} pairs x {len(config.poolings)} "
                   f"poolings), {len(shapes)} block shapes; largest {n_words} words x {n_frames} frames"),
        ("rows", f"at most {rows:,} word pairs (one per word of the shorter utterance, per pooling)"),
    ]  # fmt: skip
    calibration = (
        f"{jax.devices()[0].platform}: the kernel on a block of {PAIR_BLOCK} pairs of {n_words} words x {n_frames} "
        f"frames in {duration(call)}{' (with the OT plan)' if config.alignment == 'ot' else ''}, compiled in "
        f"{duration(compile_seconds)}; {config.text_encoder} loaded in {duration(load_seconds)}, a call "
        f"{duration(embed_call)} + {duration(embed)} a word, espeak-ng a call {duration(phone_call)} + "
        f"{duration(phonemes)} a word, a phone distance in {duration(distance)} (calibration took "
        f"{calib:.1f} s)"
    )
    peak = 2 * PAIR_BLOCK * n_frames * d * 4 + max(read_bytes / max(len(pairs) * len(layers), 1), 0)
    return Plan(
        job="interp",
        counts=counts,
        stages=stages,
        peak_memory=float(peak),
        memory_lines=[f"one unit's states ({size(peak - 2 * PAIR_BLOCK * n_frames * d * 4)}) and one block"],
        device=None,
        calibration=calibration,
        assumptions=[
            "every kernel call as long as the calibrated block (the run's largest shape: errs long); the states "
            f"read at {READ_RATE / 1e6:.0f} MB/s (a local zarr store with zstd, compare's figure)",
            "rows: one per word of the shorter utterance (errs long: mutual pairs are fewer), each a phone distance "
            "of its random word and, once over the layers and poolings, of its own; the merge, statistics and "
            "figures are not timed",
        ],
    )
