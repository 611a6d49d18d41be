"""``--plan`` for the heads job: the forward passes it makes over the evaluation set, their FLOPs, and their time here
from a calibrated ablation pass.

Reads the store's utterance tables and lengths (no states, no audio): the evaluation set is the first
``--utterances`` done utterances of each language, their windows (``n_windows``), seconds and valid frames. The
model is loaded, as the run loads it, and checked against the store with the run's own refusals.

Work, as ``engine.pipelines.heads.run`` does it, every batch padded to ``--batch_size`` rows of one language:

- **the unablated pass**: every window once, through the blocks up to the deepest layer of the pass (the scored
  layers, and the top one where there is a decoder);
- **one pass per block** (L of them): its H single-head masks times every window. Where the family resumes from a
  block (``HeadMasked.resume``: Whisper, wav2vec2), block b's pass computes the blocks below b once per window
  (unmasked) and blocks b.. the deepest once per (window, mask); otherwise every row runs the whole encoder;
- **the decoder** (WER/CER, where the model has one and ``--decode``): every row of those passes decoded greedily,
  priced by the family's decoder cost (``Family.decode_cost``, as decode's plan counts it) with
  ``TOKENS_PER_SECOND`` tokens per second of speech, at most ``--max_new_tokens``: each row's cross-attention keys
  and values (large products) at the encoder pass's rate, its tokens at the rate of a decoder step's matmuls;
- **scoring**: SeqSim of every utterance against every other at each scored layer, per mask
  (``2 * utterances^2 * longest^2 * d`` FLOPs: the utterances padded to the longest);
- **gradient importance** (``--importance``): one more unablated pass, then a forward and backward pass over every
  window (contrastive) and over the one-window transcribed utterances (ce), in batches of ``--grad_batch`` rows,
  counted as ``GRAD_OVER_FORWARD`` forwards;
- **attention statistics and sinks**: one pass over every window, where the family offers them.

Calibration, a few seconds: the model's own head-masked pass (``HeadMasked``, the job's kernel) on a batch of
``CALIBRATION_ROWS`` rows of one window at the run's shape, to the pass's deepest layer, after a first call that
compiles it; its FLOP rate prices every encoder pass, and its compile every program the run compiles (two a block
where it resumes: the prefix and the resumed blocks). The SeqSim kernel on random states of the run's width, the
decoder step's matmuls on ``--batch_size`` rows, and the model's input from 30 s of audio are timed as the seqsim,
decode and encode plans time them. A rerun reads back the parts done; the plan prices a run from nothing.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from engine.models.family import FAMILIES
from engine.pipelines.heads.config import HeadsConfig, HeadsError
from engine.pipelines.heads.run import checked, models, prompt_languages
from engine.pipelines.stages.decode_plan import TOKENS_PER_SECOND
from engine.pipelines.stages.encode_plan import calibrate_front_end, window_samples
from engine.pipelines.stages.seqsim_rate import calibrate_seqsim
from engine.runtime.devices import Device
from engine.runtime.plan import DECODE_EFFICIENCY, Plan, Stage, duration, flops, size, timed
from engine.stores.reader import open_store

CALIBRATION_ROWS = 1  # rows of the calibrated pass: a pass's time per row is about the same at 4, 8 or 16 rows
GRAD_OVER_FORWARD = 3.0  # a forward and backward pass against a forward alone (the backward's two products a matmul)
SEQSIM_FRAMES = 256  # frames of the SeqSim calibration's utterances (cropped to the run's longest)


def plan_heads_run(config: HeadsConfig, device: Device | None) -> Plan:
    """The plan of ``run_heads(config)`` (module docstring)."""
    reader = open_store(config.store)
    info = reader.info
    started = time.perf_counter()
    langs, encoder = checked(config, reader)
    notes: list[str] = []
    scored, layers, decoder, trainer = models(config, encoder, info, notes)
    load_seconds = time.perf_counter() - started
    masked = encoder.head_masked(layers)
    blocks, heads = masked.blocks, masked.heads
    deepest = min(max(layers), blocks)  # blocks a pass runs: the deepest layer of the pass's

    # The evaluation set, from the tables: per language the windows (samples each), seconds and valid frames
    windows: dict[str, list[int]] = {}
    utt_frames: list[int] = []
    seconds = 0.0
    ce_rows = 0
    prompts = prompt_languages(trainer, langs)
    for lang in langs:
        table = reader.utterances_table(lang)
        picked = np.flatnonzero(reader.done(lang))[: config.utterances]
        lengths = np.asarray(reader.lengths(lang))[picked]
        durations = np.asarray(table.column("duration_s"))[picked]
        n_windows = np.asarray(table.column("n_windows"))[picked]
        texts = np.asarray(table.column("transcription").to_pylist(), dtype=object)[picked]
        windows[lang] = [
            w
            for s in durations
            for w in window_samples(
                round(float(s) * 16000), info.long_audio, encoder.window_samples, encoder.min_samples
            )
        ]
        utt_frames += [int(x) for x in lengths]
        seconds += float(durations.sum())
        if trainer is not None and prompts[lang] is not None:
            ce_rows += int(sum(1 for n, t in zip(n_windows, texts, strict=True) if n == 1 and t))
    n_utt, n_win = len(utt_frames), sum(len(v) for v in windows.values())
    if n_utt == 0:
        raise HeadsError(f"the store has no done utterance of {langs}: nothing to ablate")
    longest_frames = max(utt_frames)
    d = encoder.embed

    # FLOPs of one row (a window under one mask) through blocks first..last, with the front (the stem) if from 0
    costs = {w: encoder.cost(w) for v in windows.values() for w in set(v)}

    def rows_flops(lang: str, masks: int, first: int, last: int, batch: int, front: bool) -> float:
        """One pass's encoder FLOPs over ``lang``'s windows, ``masks`` rows each, in batches padded to ``batch``."""
        ws = windows[lang]
        if not ws:
            return 0.0
        mean = float(np.mean([costs[w].layer * max(last - first + 1, 0) + (costs[w].front if front else 0.0)
                              for w in ws]))  # fmt: skip
        rows = len(ws) * masks
        return -(-rows // batch) * batch * mean

    resumes = masked.resume is not None
    b = config.batch_size
    none_flops = sum(rows_flops(lang, 1, 1, deepest, b, True) for lang in langs)
    block_flops = 0.0
    for blk in range(1, blocks + 1):
        for lang in langs:
            if resumes:  # the blocks below computed once per window (batches of at most its windows), then resumed
                prefix = min(b, max(len(windows[lang]), 1))
                block_flops += rows_flops(lang, 1, 1, blk - 1, prefix, True)
                block_flops += rows_flops(lang, heads, blk, deepest, b, False)
            else:
                block_flops += rows_flops(lang, heads, 1, deepest, b, True)
    ablation_flops = none_flops + block_flops
    conditions = 1 + blocks * heads

    # Calibration: the model's head-masked pass on CALIBRATION_ROWS rows of the run's longest window
    t0 = time.perf_counter()
    longest = max(max(v, default=0) for v in windows.values())
    shape = encoder.window_samples if encoder.pads_windows else max(longest, 16000)
    audio = np.random.default_rng(0).standard_normal(shape).astype(np.float32) * 0.1
    inputs, _ = encoder.windows(audio, "truncate")
    rows = min(CALIBRATION_ROWS, b)
    batch = encoder.collate([inputs[0]] * rows, rows)
    ones = np.ones((rows, blocks, heads), np.float32)
    first_call = time.perf_counter()
    jax.block_until_ready(masked(batch, ones))
    first_call = time.perf_counter() - first_call
    pass_seconds = time.perf_counter()
    jax.block_until_ready(masked(batch, ones))
    pass_seconds = time.perf_counter() - pass_seconds
    compile_seconds = max(first_call - pass_seconds, 0.0)
    big = encoder.cost(min(shape, encoder.window_samples))
    rate = rows * (big.front + deepest * big.layer) / pass_seconds
    seqsim_rate = calibrate_seqsim(d, "float32", n=4, frames=min(SEQSIM_FRAMES, max(longest_frames, 1)))
    front_seconds = calibrate_front_end(encoder)

    def here(work: float) -> float:
        return work / rate

    def on_device(work: float, efficiency: float | None = None) -> float | None:
        if device is None:
            return None
        return work / (device.flops("float32") * (efficiency or device.encoder_efficiency))

    # Programs compiled: the unablated pass; per block the prefix and the resumed blocks (or one masked pass in all)
    programs = 1 + (2 * blocks if resumes else 0)
    stages = [Stage("load + compile", 0.0, 0.0, 0.0, load_seconds + programs * compile_seconds, None)]
    stages.append(Stage("audio -> input", 0.0, seconds * 16000 * 2, 0.0, n_win * front_seconds, None))
    stages.append(
        Stage("ablations: encoder", ablation_flops, 0.0, 0.0, here(ablation_flops), on_device(ablation_flops))
    )
    decode_line = "not scored (--nodecode)" if not config.decode else "not scored (the model has no text decoder)"
    if decoder is not None:
        stage, decode_line, step_rate = _decoder(config, info, langs, windows, seconds, n_win, blocks, heads,
                                                 decoder, device, rate)  # fmt: skip
        if stage is not None:
            stages.append(stage)
    scoring = 2.0 * n_utt**2 * longest_frames**2 * d * len(scored)
    scorings = conditions + (1 if config.losses else 0)
    stages.append(Stage("scoring: seqsim", scoring * scorings, 0.0, 0.0, scoring * scorings / seqsim_rate,
                        on_device(scoring * scorings, device.seqsim_efficiency if device else None)))  # fmt: skip
    if config.losses:
        importance = sum(rows_flops(lang, 1, 1, deepest, b, True) for lang in langs)  # its unablated pass
        grad_rows = -(-n_win // config.grad_batch) * config.grad_batch if "contrastive" in config.losses else 0
        grad_rows += -(-ce_rows // config.grad_batch) * config.grad_batch if trainer is not None else 0
        full = big.front + deepest * big.layer
        importance += GRAD_OVER_FORWARD * grad_rows * full
        programs_grad = len(config.losses)
        stages.append(Stage("importance", importance, 0.0, 0.0, here(importance) + programs_grad * 2 * compile_seconds,
                            on_device(importance)))  # fmt: skip
    if encoder.attention_stats is not None:
        attention = sum(rows_flops(lang, 1, 1, blocks, b, True) for lang in langs)
        stages.append(Stage("attention", attention, 0.0, 0.0, here(attention) + compile_seconds, on_device(attention)))
    calibration = (
        f"{jax.devices()[0].platform}: the model's head-masked pass on {rows} window(s) of {shape / 16000:.0f} s to "
        f"block {deepest} in {duration(pass_seconds)} = {rate / 1e9:.1f} GFLOP/s (compiled in "
        f"{duration(compile_seconds)}), SeqSim at {seqsim_rate / 1e9:.1f} GFLOP/s, the input of 30 s in "
        f"{duration(front_seconds)}"
    )
    if decoder is not None and step_rate:
        calibration += f", decoder-step matmuls at {step_rate / 1e9:.1f} GFLOP/s"
    calibration += f" (calibration took {time.perf_counter() - t0:.1f} s)"

    one_pass = ablation_flops / max(1 + blocks, 1)
    counts = [
        ("store", config.store),
        ("model", f"{encoder.name} ({encoder.family}): {blocks} blocks x {heads} heads, d={d}"),
        ("evaluation set", f"{n_utt} utterances ({config.utterances} a language at most) in {len(langs)} languages, "
                           f"{n_win} windows, {seconds:.0f} s of audio; longest {longest_frames} frames"),
        ("layers", f"scored {list(scored)}; the pass computes {list(layers)}, {deepest} of {blocks} blocks"),
        ("passes", f"{1 + blocks} over the evaluation set (1 unablated + 1 a block), {conditions} masks: "
                   f"{conditions * n_win} window rows" + (", each block's lower blocks shared by its masks"
                                                          if resumes else "")),
        ("FLOPs", f"{flops(ablation_flops)} of encoder in the ablations ({flops(one_pass)} a pass on average)"),
        ("WER/CER", decode_line),
        ("importance", f"{', '.join(config.losses)}: forward and backward over every window ({n_win}) and the "
                       f"one-window transcribed utterances ({ce_rows})" if config.losses else "none (--importance)"),
        ("attention statistics and sinks", f"one pass (sinks: the top {config.sink_frames} frames)"
         if encoder.attention_stats is not None else "not offered by the family"),
    ]  # fmt: skip
    counts += [("not scored", note) for note in notes]
    state_rows = heads * len(scored) * sum(utt_frames) * d * 4
    peak = big.params * 4 + b * len(layers) * big.frames * d * 4 + state_rows + n_utt * longest_frames * d * 4
    return Plan(
        job="heads",
        counts=counts,
        stages=stages,
        peak_memory=float(peak),
        memory_lines=[
            f"the weights, one batch of {b} rows' layers, and a block's pass held for scoring: every frame of the "
            f"evaluation set at each scored layer under each of its {heads} masks ({size(state_rows)})"
        ],
        device=device,
        calibration=calibration,
        assumptions=[
            f"every encoder pass at the calibrated pass's FLOP rate; a gradient costs {GRAD_OVER_FORWARD:.0f} "
            "forwards; each program compiles as long as the calibrated pass (a gradient twice)",
            f"{TOKENS_PER_SECOND:.0f} decoded tokens per second of speech under every mask (an ablation that "
            "rambles decodes up to --max_new_tokens: errs short)",
            "the language-ID probes (one fit per scored layer) and the tables and figures are not timed: seconds",
        ],
    )


def _decoder(config, info, langs, windows, seconds, n_win, blocks, heads, decoder, device, rate):
    """(the decoder's stage or None, the count's line, the calibrated step rate) of the ablations' greedy decodes:
    each row's cross-attention keys and values (large products, at the encoder pass's FLOP ``rate``), then its tokens
    (a step's matmuls on ``--batch_size`` rows, timed here)."""
    cost_of = FAMILIES[info.family].decode_cost
    if cost_of is None:
        return None, "decoded under every mask; not priced (no cost model of this family's decoder)", 0.0
    cost = cost_of(info.dims.to_dict())
    decoded = [lang for lang in langs if decoder.language(lang, {}) is not None]
    b = config.batch_size
    rows = 0
    for lang in decoded:
        n = len(windows[lang])
        rows += -(-n // b) * b + blocks * (-(-n * heads // b) * b)  # the unablated pass, then each block's
    tokens = min(config.max_new_tokens, cost.prompt_tokens + TOKENS_PER_SECOND * seconds / max(n_win, 1))
    work = rows * (cost.cross_kv + tokens * cost.per_token)
    step, x, step_flops = cost.decoder_step(b, "float32")
    step_rate = step_flops / timed(step, x)
    seconds_here = rows * cost.cross_kv / rate + rows * tokens * cost.per_token / step_rate
    dev = None
    if device is not None:
        weights = cost.weight_count * 4
        dev = max(work / (device.flops("float32") * DECODE_EFFICIENCY), rows / b * tokens * weights / device.bandwidth)
    line = (f"greedy decodes of {rows} rows ({len(decoded)} of {len(langs)} languages have a prompt), "
            f"~{tokens:.0f} tokens a window (--max_new_tokens {config.max_new_tokens})")  # fmt: skip
    return Stage("ablations: decoder", work, 0.0, 0.0, seconds_here, dev), line, step_rate
