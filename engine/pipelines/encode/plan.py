"""The plan of an encode run (``--plan``): the dataset's headers (no audio decoded) and the model, any family, priced
by the encoder's plan (``engine.pipelines.stages.encode_plan.plan_encode``), with the dataset's listing."""

from __future__ import annotations

import time
import types
from collections.abc import Mapping, Sequence

import jax.numpy as jnp

from engine.data.pairing import pairing_lines, shared_ids
from engine.data.revision import source_revision
from engine.errors import AudioError
from engine.models.family import load_encoder
from engine.pipelines.encode.run import check_languages, dataset_source
from engine.pipelines.stages.encode_plan import plan_encode
from engine.pipelines.stages.windows import over_cap, padding_note, resampled_samples
from engine.runtime.devices import Device
from engine.runtime.plan import Plan


def plan_encode_run(config, device: Device | None) -> Plan:
    """The plan of an ``EncodeConfig``: the dataset's headers (no audio decoded) and the model, any family, through
    the family interface (``plan_encode``)."""
    started = time.perf_counter()
    encoder = load_encoder(
        config.model, adapter=config.adapter, dtype=jnp.dtype(config.compute_dtype), output=config.tower_output
    )
    load_seconds = time.perf_counter() - started
    source = dataset_source(config)
    langs = list(config.langs) if config.langs else source.languages()
    check_languages(langs, encoder)  # what the run refuses, the plan refuses
    listing = {lang: source.utterances(lang, config.split) for lang in langs}
    shared = shared_ids(listing)
    samples, seconds, unreadable, long, framed = {}, 0.0, [], [], {}
    for lang in langs:
        samples[lang], framed[lang] = [], []
        for utt in listing[lang]:
            try:
                info = utt.probe()
            except AudioError as e:
                unreadable.append((lang, utt.id, type(e).__name__))
                continue
            if over_cap(info.duration_s, config.long_audio, config.max_seconds):
                long.append((lang, utt.id, info.duration_s))
                continue
            samples[lang].append(resampled_samples(info.frames, info.sample_rate))
            seconds += info.duration_s
            n_frames = encoder.expected_frames(samples[lang][-1], config.long_audio)[0]  # as the run's table has it
            framed[lang].append(types.SimpleNamespace(id=utt.id, duration_s=info.duration_s, n_frames=n_frames))
    plan = plan_encode(
        encoder,
        samples,
        seconds,
        layers=tuple(sorted(config.layers)) if config.layers is not None else tuple(range(encoder.n_layers_out)),
        long_audio=config.long_audio,
        dtype=config.dtype,
        compute_dtype=config.compute_dtype,
        batch_size=config.batch_size,
        prefetch=config.prefetch,
        device=device,
        model=config.model or "packaged whisper-base",
        load_seconds=load_seconds,
    )
    plan.counts[1:1] = dataset_lines(source, listing, config.split)
    for line in pairing_lines(shared):  # what the run would refuse (no id shared) is visible in the plan too
        name, _, value = line.partition(": ")
        plan.counts.append((name, value))
    if unreadable:  # left out of the counts above: the run skips them too (and names them in the store)
        shown = ", ".join(f"{lang}/{uid} ({why})" for lang, uid, why in unreadable[:5])
        more = f" and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        plan.counts.append(("unreadable", f"{len(unreadable)} clips left out of the counts, as the run skips them: "
                                          f"{shown}{more}"))  # fmt: skip
    for lang in langs:
        note = padding_note(lang, framed[lang])
        if note:
            plan.counts.append(("padding", note))
    if long:  # as the run skips them (LongAudioError): their length would pad every shard of their language
        shown = ", ".join(f"{lang}/{uid} ({s:.0f} s)" for lang, uid, s in long[:5])
        more = f" and {len(long) - 5} more" if len(long) > 5 else ""
        plan.counts.append(("too long", f"{len(long)} recordings over --max_seconds {config.max_seconds:g} left out of "
                                        f"the counts, as the run skips them: {shown}{more}"))  # fmt: skip
    return plan


def dataset_lines(source, listing: Mapping[str, Sequence], split: str) -> list[tuple[str, str]]:
    """The plan's dry listing of the dataset: what it is, its revision, how its columns map (hf:), and per language
    the utterances, the transcribed ones and the first ids."""
    lines = [("dataset", f"{source.name} split {split if source.splits() else '(none: all of it)'}")]
    lines.append(("revision", source_revision(source) or "(none stated)"))
    mapping = getattr(source, "column_mapping", None)
    if callable(mapping):
        named = {k: v or ("(row number)" if k == "id" else "(none)") for k, v in mapping().items()}
        lines.append(("columns", ", ".join(f"{k}={v}" for k, v in named.items())))
    for lang, utts in listing.items():
        texts = sum(1 for u in utts if u.transcription)
        first = ", ".join(u.id for u in utts[:3]) + (" ..." if len(utts) > 3 else "")
        lines.append((f"  {lang}", f"{len(utts)} utterances, {texts} transcribed; ids {first or '(none)'}"))
    return lines
