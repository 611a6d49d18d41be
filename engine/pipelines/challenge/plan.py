"""``--plan`` for the challenge job: the sentence pairs it judges per language pair, the word pairs whose phones it
compares, and their time here.

Reads the store's utterance tables (the transcriptions; no states), with the run's own checks
(``engine.pipelines.challenge.run.request``). Per language pair, as the run does it: the mismatched sentence pairs
drawn to calibrate (or measure) the sound rule (``soundalike.mismatched_pairs``, the run's own draw), then every
shared id; each sentence pair compares every distinct word of one side with every distinct word of the other
(``soundalike.sound_alike``: the words too short for the rule are left out, so this errs long; distances are cached
between pairs). Each language's words are phonemised by espeak-ng once, a call per sentence first met.

Calibration, a few seconds: espeak-ng on one word and on ``SAMPLE_WORDS`` of the first language (a call and a word),
and the phone distance on as many word pairs. spaCy's entities (``--ner``) are not timed.
"""

from __future__ import annotations

import time

from engine.pipelines.challenge.config import ChallengeConfig
from engine.pipelines.challenge.rules import texts_by_id, words
from engine.pipelines.challenge.run import request
from engine.runtime.devices import Device
from engine.runtime.plan import SAMPLE_WORDS, Plan, Stage, call_and_word, duration
from engine.text import phones as ph
from engine.text.soundalike import fold_case, mismatched_pairs


def plan_challenge_run(config: ChallengeConfig, device: Device | None = None) -> Plan:
    """The plan of ``run_challenge(config)`` (module docstring); ``device`` is not modelled."""
    store, pairs = request(config)
    langs = sorted({lang for p in pairs for lang in p})
    tokens = {}
    for lang in langs:
        texts = texts_by_id(store.utterances_table(lang))
        tokens[lang] = {uid: sorted(set(map(fold_case, words(t)))) for uid, t in texts.items()}
    c = config.calibration
    sentence_pairs = word_pairs = drawn_total = shared_total = 0
    for a, b in pairs:
        drawn = mismatched_pairs(tokens[a], tokens[b], c.max_pairs, c.seed, a, b)
        shared = sorted(tokens[a].keys() & tokens[b].keys())
        judged = drawn + [(u, u) for u in shared]
        drawn_total, shared_total = drawn_total + len(drawn), shared_total + len(shared)
        sentence_pairs += len(judged)
        word_pairs += sum(len(tokens[a][i]) * len(tokens[b][j]) for i, j in judged)
    distinct = sum(len({w for ws in tokens[lang].values() for w in ws}) for lang in langs)
    sentences = sum(len(tokens[lang]) for lang in langs)

    t0 = time.perf_counter()
    lang0 = langs[0]
    sample = sorted({w for ws in tokens[lang0].values() for w in ws})[:SAMPLE_WORDS] or ["a"]
    load, call, per_word = call_and_word(lambda ws: ph.phonemize_words(lang0, ws), sample)
    said = ph.phonemize_words(lang0, sample)
    ph.phone_distance(said[0], said[-1])  # its tables loaded
    started = time.perf_counter()
    for i in range(len(said)):
        ph.phone_distance(said[i], said[-1 - i])
    distance = (time.perf_counter() - started) / len(said)
    calib = time.perf_counter() - t0

    stages = [
        Stage("phonemes (espeak-ng)", 0.0, 0.0, 0.0, load + sentences * call + distinct * per_word),
        Stage("sound rule", 0.0, 0.0, 0.0, word_pairs * distance),
    ]
    threshold = "calibrated per pair on chance" if config.phone_threshold == "auto" else "fixed"
    counts = [
        ("store", config.store),
        ("language pairs", f"{len(pairs)}: {', '.join(f'{a}:{b}' for a, b in pairs[:8])}"
                           + (" ..." if len(pairs) > 8 else "")),
        ("sentence pairs", f"{sentence_pairs}: {shared_total} shared ids judged, {drawn_total} mismatched drawn "
                           f"(--chance_pairs {c.max_pairs}; the threshold {threshold})"),
        ("word pairs", f"at most {word_pairs:,} phone distances (every distinct word of one side with every one of "
                       "the other)"),
        ("words", f"{distinct:,} distinct in {len(langs)} languages, phonemised once"),
    ]  # fmt: skip
    calibration = (
        f"espeak-ng ({lang0}): a call {duration(call)} + {duration(per_word)} a word (first call {duration(load)} "
        f"more), a phone distance in {duration(distance)} (calibration took {calib:.1f} s)"
    )
    return Plan(
        job="challenge",
        counts=counts,
        stages=stages,
        peak_memory=0.0,
        memory_lines=["the transcriptions and the phone book: small"],
        device=None,
        calibration=calibration,
        assumptions=[
            "every word pair eligible and none cached (errs long: short words are left out, and distances recur)",
            "spaCy's entities (--ner) and writing the CSVs are not timed",
        ],
    )
