"""The neurons job's plan (``--plan``): the counting pass and the intervention's passes, priced as encode prices them.

The counting pass is one forward pass over every utterance with the feed-forward units counted: the encode job's
forward (``engine.pipelines.stages.encode_plan.plan_encode``, its FLOPs from the family's cost and its step timed
here) times ``COUNT_OVERHEAD``, what counting adds to a forward (bench/neurons.py: 1.07x on whisper-base), with
nothing stored.
The intervention (``--intervene``) encodes its evaluation set (the first ``--intervene_utterances`` of every language)
once unchanged and once per condition: per language switched off, its selected units off and ``--random_draws``
random draws. ``--intervene all`` is priced for every language, an upper bound: only the languages that own a
selected unit (known once the counts are done) are switched off. A rerun reads back what is done; the plan prices a
run from nothing.
"""

from __future__ import annotations

import time

from engine.data.sources import get_source
from engine.errors import AudioError
from engine.models.family import load_encoder
from engine.pipelines.stages.encode_plan import plan_encode
from engine.pipelines.stages.windows import resampled_samples
from engine.runtime.devices import Device
from engine.runtime.plan import Plan, Stage, duration

COUNT_OVERHEAD = 1.07  # counting against a plain forward, bench/RESULTS.md "neurons" (whisper-base, AVX-512)


def _stage(plan: Plan, name: str) -> Stage:
    return next((s for s in plan.stages if s.name == name), Stage(name, 0.0, 0.0, 0.0, 0.0, None))


def plan_neurons_run(config, device: Device | None) -> Plan:
    """The plan of a ``NeuronsConfig`` (module docstring): the dataset's headers, no audio decoded."""
    started = time.perf_counter()
    encoder = load_encoder(config.model, adapter=config.adapter)
    load_seconds = time.perf_counter() - started
    source = get_source(config.dataset, lang=config.lang, audio_column=config.audio_column,
                        text_column=config.text_column, id_column=config.id_column,
                        lang_column=config.lang_column)  # fmt: skip
    langs = list(config.langs) if config.langs else source.languages()
    samples: dict[str, list[int]] = {}
    seconds: dict[str, list[float]] = {}
    for lang in langs:
        samples[lang], seconds[lang] = [], []
        for utt in source.utterances(lang, config.split):
            try:
                info = utt.probe()
            except AudioError:
                continue
            samples[lang].append(resampled_samples(info.frames, info.sample_rate))
            seconds[lang].append(info.duration_s)
    common = dict(layers=tuple(range(encoder.n_layers_out)), long_audio=config.long_audio, dtype="float32",
                  compute_dtype="float32", batch_size=config.batch_size, prefetch=config.prefetch, device=device,
                  model=config.model or "packaged whisper-base", write_rate=1e18)  # fmt: skip
    total_audio = sum(sum(v) for v in seconds.values())
    counting = plan_encode(encoder, samples, total_audio, load_seconds=load_seconds, **common)
    forward = _stage(counting, "encoder")
    stages = [_stage(counting, "load + compile")]
    stages.append(Stage("count: input", *_costs(_stage(counting, "audio -> input"), 1.0)))
    stages.append(Stage("count: forward", *_costs(forward, COUNT_OVERHEAD)))
    counts = [c for c in counting.counts if c[0] in ("model", "languages", "utterances", "audio", "windows")]
    if config.intervene:
        targets = len(langs) if list(config.intervene) == ["all"] else len(config.intervene)
        passes = 1 + targets * (1 + config.random_draws)
        per = config.intervene_utterances
        subset = {lang: v[:per] for lang, v in samples.items()}
        audio = sum(sum(v[:per]) for v in seconds.values())
        rate = (forward.flops / forward.seconds_here, "as the counting pass") if forward.seconds_here else None
        one = plan_encode(encoder, subset, audio, rate=rate, **common)
        stages.append(Stage("intervene: input", *_costs(_stage(one, "audio -> input"), passes)))
        stages.append(Stage("intervene: forward", *_costs(_stage(one, "encoder"), passes)))
        every = " (every language: an upper bound, only those owning a unit are switched off)"
        counts.append((
            "intervention",
            f"{sum(len(v) for v in subset.values())} utterances ({per} per language at most) encoded {passes} times: "
            f"1 unchanged + {targets} language(s){every if list(config.intervene) == ['all'] else ''} x (selected + "
            f"{config.random_draws} random draws); one pass {duration(_stage(one, 'encoder').seconds_here)} here",
        ))  # fmt: skip
    else:
        counts.append(("intervention", "none (--intervene)"))
    return Plan(
        job="neurons",
        counts=counts,
        stages=stages,
        peak_memory=counting.peak_memory,
        memory_lines=[f"one forward step of {config.batch_size} windows (--batch_size); nothing per frame is kept"],
        device=device,
        calibration=counting.calibration,
        assumptions=[
            f"counting costs {COUNT_OVERHEAD}x a forward (bench/neurons.py); the probes and R@1 of the "
            "intervention (seconds) are left out"
        ],  # fmt: skip
    )


def _costs(stage: Stage, times: float) -> tuple:
    """(flops, read, written, seconds here, seconds on the device) of ``stage`` run ``times`` times."""
    device = None if stage.seconds_device is None else stage.seconds_device * times
    return stage.flops * times, stage.bytes_read * times, 0.0, stage.seconds_here * times, device
