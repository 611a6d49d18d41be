"""The end of a decode run: the parts merged into hypotheses.parquet, scored (scores.csv), the skips listed
(skipped.csv), and the report and figures (``engine.pipelines.decode.report``)."""

from __future__ import annotations

from collections.abc import Mapping

import pyarrow as pa

from engine import captions
from engine.data.audio import load_audio
from engine.errors import AudioError
from engine.pipelines.decode import hypotheses as hyp
from engine.pipelines.decode.config import DecodeError
from engine.pipelines.decode.report import figures, report_markdown, scores_table
from engine.pipelines.stages.windows import audio_skip_reason, recorded_skip_reason
from engine.stores.integrity import write_outputs
from engine.stores.parts import read_part, table_bytes
from engine.stores.records import csv_bytes
from engine.stores.schema import is_done
from engine.text import metrics as text_metrics
from engine.text import phones


def _not_encoded_reason(path: str, recorded: dict | None) -> str:
    """Why the store has no states for an utterance: from the encode job's skip record (``recorded``, its entry in
    ``LayerStore.skipped``) where it has one; else, for a store written before the encode job recorded its skips, its
    audio is read again to name the reason. ``not_encoded`` when the audio is fine (the encode job has not reached it,
    or refused its states)."""
    if recorded is not None:
        return recorded_skip_reason(recorded["reason"])
    try:
        load_audio(path)
    except AudioError as e:
        return audio_skip_reason(e)
    return "not_encoded"


def score_rows(table: pa.Table, codes: Mapping[str, str]) -> list[dict]:
    """Corpus scores per (language, layer, ln_post, task, decoding) of hypothesis rows with a reference: WER and CER
    (jiwer, Whisper's normaliser of the reference's language), BLEU and chrF (sacrebleu, on the same normalised text).
    Empty hypotheses are scored (as all deletions), not dropped.

    ``codes``: the Whisper code each store language's transcription is written in (``--decode_as`` applied). It picks
    the normaliser and tokeniser for transcribe, not the hypothesis' language token, which ``--language detect`` may
    set to another language per utterance; translate is scored as English. phones: PER, the phone error rate (jiwer's
    WER over IPA segments) of the hypothesis' ``/.../`` phones against espeak-ng's phones of the normalised reference
    words in the language's voice (``engine.text.phones``)."""
    df = table.to_pandas()
    df = df[df["reference"].notna()]
    out = []
    for (lang, layer, ln_post, task, decoding), g in df.groupby(
        ["language", "layer", "ln_post", "task", "decoding"], sort=True
    ):
        target = "en" if task == "translate" else codes[lang]
        norm = text_metrics.normalizer_for(target)
        refs = [norm(r) for r in g["reference"]]
        if task == "phones":  # the reference's words phonemised; the hypothesis' /.../ phones as they are
            refs = [" ".join(phones.sentence_phones(target, r.split())) for r in refs]
            hyps = [" ".join(phones.phone_tokens(h)) for h in g["hypothesis"]]
        else:
            hyps = [norm(h) for h in g["hypothesis"]]
        if not any(r.split() for r in refs):
            continue
        if task == "phones":
            values = {"per": text_metrics.error_rate(refs, hyps, "word", normalize=False)}
        else:
            values = {
                "wer": text_metrics.error_rate(refs, hyps, "word", normalize=False),
                "cer": text_metrics.error_rate(refs, hyps, "char", normalize=False),
                "bleu": text_metrics.bleu(refs, hyps, target),
                "chrf": text_metrics.chrf(refs, hyps),
            }
        for metric, value in values.items():
            out.append(
                dict(
                    language=lang,
                    layer=int(layer),
                    ln_post=bool(ln_post),
                    task=task,
                    decoding=decoding,
                    metric=metric,
                    value=value,
                    n=len(g),
                )  # fmt: skip
            )
    return out


def merge(kv, config, reader, langs, codes, variants, summary) -> None:
    """Process 0, once every unit is done: the parts of ``langs`` x ``variants`` x tasks x decodings merged, scored
    and written with the skips, the report and the figures (``engine.pipelines.decode.hypotheses``); ``codes`` as in
    ``score_rows``. The paths written go to ``summary.outputs``, the scores table to ``summary.table``."""
    tables, skipped = [], set()
    for lang in langs:
        for layer, ln_post in variants:
            for task in config.tasks:
                for decoding in config.decodings:
                    key = hyp.part_key(lang, task, decoding, layer, ln_post)
                    part = read_part(kv, key, config.run.out, "decode")
                    if part is None:
                        raise DecodeError(f"part {key} is missing after every process finished")
                    tables.append(part[0].replace_schema_metadata(None))
                    skipped |= {tuple(s) for s in part[1]["skipped"]}
        done = is_done(reader.lengths(lang))
        named = {(s[0], s[1]) for s in skipped if s[2] == "*"}  # audio the decoder could not read: named already
        recorded = reader.skipped_records(lang)
        for u, r in enumerate(reader.arrays(lang).rows):
            if not done[u] and (lang, r.id) not in named:
                skipped.add((lang, r.id, "*", _not_encoded_reason(r.path, recorded.get(u))))
    for lang, uid, _, reason in sorted(skipped):
        summary.skip(reason, lang, uid)
    table = pa.concat_tables(tables) if tables else hyp.HYPOTHESIS_SCHEMA.empty_table()
    scores = score_rows(table, {lang: code for lang, code in codes.items() if code is not None})
    files = {
        hyp.HYPOTHESES: table_bytes(table),
        hyp.SCORES: csv_bytes(hyp.SCORE_COLUMNS, [[s[c] for c in hyp.SCORE_COLUMNS] for s in scores]),
        hyp.SKIPPED: csv_bytes(("language", "id", "task", "reason"), sorted(skipped)),
        hyp.REPORT: report_markdown(table, scores, summary, config.report_samples).encode(),
        **figures(scores, captions.source_line(reader.info.model_name, reader.manifest.get("created"))),
    }
    write_outputs(kv, files, config.run.out)
    root = config.run.out.rstrip("/") + "/"
    summary.outputs += [root + name for name in files]
    summary.table = scores_table(scores)
