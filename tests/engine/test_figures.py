"""Every job's figures name the model, the dataset and n in their title, read back from the PNG's ``Title`` chunk
(``engine.figures.png_title``), at 2 and at 8 languages; and no figure is drawn from no data.

The figure functions run here on planted scores (no model, no store): decode, interp, probe, probes, compare,
finetune, and retrieval's challenge-subset figure. The job tests read the same title back from a real run's PNG.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyarrow as pa
import pytest

from engine import captions
from engine.figures import png_title

LANGS = ("de", "en", "es", "fr", "pt", "ja", "zh", "ar")
SOURCE = captions.source_line("whisper-base", {"dataset": "fleurs", "split": "test"})
NAMED = ("whisper-base", "dataset fleurs (test)")


def assert_names_source(png: bytes, *n_parts: str) -> str:
    title = png_title(png)
    for part in (*NAMED, *n_parts):
        assert part in title, f"{part!r} not in the figure title {title!r}"
    return title


# -- captions -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "created, label",
    [
        ({"dataset": "demo"}, "dataset demo: synthetic espeak-ng speech"),
        ({"dataset": "words-demo", "split": "test"}, "dataset words-demo: synthetic espeak-ng speech"),
        ({"dataset": "fleurs", "split": "dev"}, "dataset fleurs (dev)"),
        ({"dataset": "folder:/data/run-7/my-clips/", "split": "test"}, "dataset folder my-clips"),  # no split
        ({"dataset": "manifest:/data/x/clips.jsonl"}, "dataset manifest clips.jsonl"),
        ({"dataset": "fleurs:/mnt/fleurs", "split": "test"}, "dataset fleurs (test)"),
        ({"dataset": "demo:/var/cache/babelgrid"}, "dataset demo: synthetic espeak-ng speech"),
        ({}, "dataset unknown"),
        (None, "dataset unknown"),
    ],
)
def test_dataset_label_names_the_set_never_a_machine_path(created, label):
    assert captions.dataset_label(created) == label
    assert "/" not in captions.source_line("m", created)


def test_source_line_and_counts():
    assert captions.source_line("tiny", {"dataset": "demo"}, "n = 3 utterances") == (
        "tiny; dataset demo: synthetic espeak-ng speech; n = 3 utterances"
    )
    assert captions.count_range([4, 4], "clips") == "4 clips"
    assert captions.count_range([5, 3, 4], "clips") == "3-5 clips"
    assert captions.count_range([], "clips") == "0 clips"


# -- each job's figures ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_langs", [2, 8])
def test_decode(n_langs):
    from engine.pipelines.decode.report import figures

    rng = np.random.default_rng(n_langs)
    scores = [
        dict(
            language=lang,
            layer=layer,
            ln_post=ln_post,
            task=task,
            decoding="greedy",
            metric=metric,
            value=float(rng.uniform()),
            n=10 + i,
        )  # fmt: skip
        for i, lang in enumerate(LANGS[:n_langs])
        for layer in range(4)
        for ln_post in (True, False)
        for task, metrics in (("transcribe", ("wer", "cer")), ("translate", ("bleu", "chrf")))
        for metric in metrics
    ]
    pngs = figures(scores, SOURCE)
    assert list(pngs) == ["scores-greedy.png"]
    assert_names_source(pngs["scores-greedy.png"], f"n = 10-{9 + n_langs} utterances per language and layer")
    assert figures([], SOURCE) == {}


def test_decode_panels_label_every_axis_in_percent_and_tick_whole_layers():
    """The issue-50 figure: WER and CER in percent on every panel's y axis, whole-layer ticks, and an ``ln_post off``
    panel that holds one layer drawn as a visible marker with that layer as its one tick."""
    from engine.pipelines.decode.report import figure

    common = dict(task="transcribe", decoding="greedy", value=0.25, n=30)
    scores = [
        dict(common, language=lang, layer=layer, ln_post=ln_post, metric=metric)
        for lang in ("de", "en")
        for layer, ln_post in ((6, True), (6, False), (7, True))
        for metric in ("wer", "cer")
    ]
    source = captions.source_line("whisper-base", {"dataset": "demo"})
    fig = figure(scores, "greedy", source)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == [
        "transcribe: CER (ln_post off)", "transcribe: WER (ln_post off)",
        "transcribe: CER (ln_post on)", "transcribe: WER (ln_post on)",
    ]  # fmt: skip
    assert [ax.get_ylabel() for ax in axes] == ["CER (%)", "WER (%)", "CER (%)", "WER (%)"]
    for ax in axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks and all(float(t).is_integer() for t in ticks), (ax.get_title(), ticks)
        assert all(line.get_ydata()[0] == 25.0 for line in ax.get_lines())  # 0.25 in scores.csv: 25 %
    off = axes[0]
    assert [t for t in off.get_xticks()] == [6] and off.get_xlim() == (5, 7)
    assert {line.get_marker() for line in off.get_lines()} == {"o"}
    assert {line.get_marker() for line in axes[2].get_lines()} == {"."}
    title = fig.get_suptitle()
    for part in ("whisper-base", "dataset demo", "n = 30 utterances per language and layer"):
        assert part in title, title


def test_decode_report_gives_wer_in_percent():
    from engine.pipelines.decode.report import scores_table

    scores = [
        dict(language="en", layer=7, ln_post=True, task="transcribe", decoding="greedy", metric=m, value=v, n=30)
        for m, v in (("wer", 0.123), ("cer", 0.06))
    ]
    table = scores_table(scores)
    assert "WER/CER in %" in table and "| 12.3/6.0 |" in table


def interp_rows(n_layers=3, matched=True):
    return [
        dict(
            layer=layer,
            pooling=pooling,
            n_utterance_pairs=6,
            n_word_pairs=20 + layer,
            text_sim_matched=0.5 if matched else math.nan,
            text_sim_random=0.1,
            phone_dist_matched=0.4 if matched else math.nan,
            phone_dist_random=0.8,
        )  # fmt: skip
        for layer in range(n_layers)
        for pooling in ("mean", "centre")
    ]


def test_interp():
    from engine.pipelines.interp.report import figure_pngs

    pngs = figure_pngs("de__en", interp_rows(), SOURCE, "ot")
    assert sorted(pngs) == ["phone_distance", "text_similarity"]
    title = assert_names_source(pngs["text_similarity"], "n = 6 utterance pairs", "20-22 word pairs")
    assert "de - en: OT-linked word pairs" in title
    assert "mutual-best" in png_title(figure_pngs("de__en", interp_rows(), SOURCE)["phone_distance"])
    assert figure_pngs("de__en", [], SOURCE) == {}
    assert figure_pngs("de__en", interp_rows(matched=False), SOURCE) == {}  # no matched pair at any layer


@pytest.mark.parametrize("n_langs", [2, 8])
def test_probe(n_langs):
    from engine.pipelines.probe.run import MEASURES, RELATIONS, probe_figure

    rows = [
        (a, b, layer, measure, pooling, f"mean_sim_{relation}", 0.5, 0.4, 0.6, 12, 100)
        for a, b in itertools.permutations(LANGS[:n_langs], 2)
        for layer in range(4)
        for measure, pooling in MEASURES
        for relation in RELATIONS
    ]
    pairs = n_langs * (n_langs - 1)
    assert_names_source(probe_figure(rows, SOURCE), f"{pairs} language pairs", "n = 12 word pairs per relation")
    assert probe_figure([], SOURCE) is None
    assert probe_figure([(*r[:9], 0, 100) for r in rows], SOURCE) is None  # no word pair of any relation


@pytest.mark.parametrize("n_langs", [2, 8])
def test_probes(n_langs):
    from engine.pipelines.probes import cca, samediff
    from engine.pipelines.probes.run import FIGURES, ProbesSummary, outputs
    from engine.pipelines.stages import lid

    summary = ProbesSummary()
    for layer in range(4):
        summary.lid.append(lid.LidScore(layer, 0.8, 0.7, 40 * n_langs, 1 / n_langs, (1.0,)))
        for lang in LANGS[:n_langs]:
            summary.samediff.append(samediff.SameDiffScore(lang, layer, "cosine", 0.4, 0.1, 400, 30, 60, 20, 2))
        summary.cca.append(cca.CcaScore(layer, "phone", 0.5, 0.1, 200, 200, 16))
    source = captions.source_line("whisper-base", {"dataset": "fleurs", "split": "test"}, f"{n_langs} languages")
    writes = outputs(summary, ("lid", "samediff", "cca"), source)
    for probe in ("lid", "samediff", "cca"):
        assert_names_source(writes[FIGURES[probe]], f"{n_langs} languages")
    assert f"n = {40 * n_langs} utterances" in png_title(writes[FIGURES["lid"]])
    empty = outputs(ProbesSummary(), ("lid", "samediff", "cca"), source)
    assert not [key for key in empty if key.endswith(".png")] and len(empty) == 3  # the CSVs, no figure


def test_compare():
    from engine.pipelines.compare import depth
    from engine.pipelines.compare.run import ALL, SCHEMA, _figures

    names = ("whisper-base", "whisper-small")
    rows = [
        dict(
            model_a=a,
            layer_a=la,
            model_b=b,
            layer_b=lb,
            language=ALL,
            level="utterance",
            measure="cka",
            value=0.5,
            n=80,
        )  # fmt: skip
        for a, b in (names[:1] * 2, names)
        for la in range(3)
        for lb in range(3)
    ]
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    subtitle = f"{', '.join(names)}; dataset fleurs (test); 8 languages"
    depth_rows = [
        (model, layer, layer / 2, ALL, ALL, "mean", metric, 0.5, 0.1, 40)
        for model in names
        for layer in range(3)
        for metric in depth.METRICS
    ]
    writes = _figures(depth_rows, table, names, subtitle)
    assert "figures/by_depth.png" in writes
    for key, png in writes.items():
        title = assert_names_source(png, "8 languages", "n = ")
        assert "whisper-small" in title, key
    blank = pa.Table.from_pylist([dict(r, value=None) for r in rows], schema=SCHEMA)
    pwcca = pa.Table.from_pylist(rows + [dict(r, measure="pwcca", value=None) for r in rows], schema=SCHEMA)
    no_pwcca = _figures([], pwcca, names, subtitle)
    assert sorted(no_pwcca) == sorted(k for k in writes if k != "figures/by_depth.png")
    assert all("not measured (too few examples): PWCCA" in png_title(png) for png in no_pwcca.values())
    nan_depth = [(*r[:7], math.nan, math.nan, r[9]) for r in depth_rows]
    assert _figures(nan_depth, blank, names, subtitle) == {}
    assert _figures([], SCHEMA.empty_table(), names, subtitle) == {}


@pytest.mark.parametrize("n_langs", [2, 8])
def test_finetune(n_langs):
    from engine.pipelines.finetune.report import figure_pngs

    rows = [dict(step=s, split="train", source_lang="de", target_lang="en", task="transcribe", metric="loss",
                 value=f"{3.0 / (s + 1):.4f}", n=16) for s in range(1, 5)]  # fmt: skip
    rows += [
        dict(
            step=step, split="held_out", source_lang=lang, target_lang="en", task=task, metric=metric, value="20.0", n=5
        )  # fmt: skip
        for step in (0, 4)
        for lang in LANGS[:n_langs]
        for task in ("transcribe", "translate")
        for metric in ("bleu", "chrf")
    ]
    pngs = figure_pngs(rows, 4, SOURCE)
    assert sorted(pngs) == ["bleu.png", "loss.png"]
    assert_names_source(pngs["loss.png"])
    assert_names_source(pngs["bleu.png"], "n = 5 held-out utterances per language")
    assert figure_pngs([], 4, SOURCE) == {}


def test_compare_heatmaps_leave_out_a_measure_with_no_value():
    """PWCCA has no value on the demo (too few examples): no blank panel that reads as a broken figure, a note under
    the title instead."""
    from engine.pipelines.compare.figures import heatmaps_figure

    grids = {"cka": np.full((3, 3), 0.5), "pwcca": np.full((3, 3), np.nan), "svcca": np.eye(3)}
    fig = heatmaps_figure(grids, [0, 1, 2], [0, 1, 2], model_a="a", model_b="b", title="a x b", subtitle="n = 4")
    panels = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    assert panels == ["linear CKA", "SVCCA (99% variance)"]
    assert fig.get_suptitle().endswith("not measured (too few examples): PWCCA (weights: row model)")
    with pytest.raises(ValueError, match="no measure has a value"):
        heatmaps_figure({"pwcca": grids["pwcca"]}, [0, 1, 2], [0, 1, 2], model_a="a", model_b="b", title="t")


@pytest.mark.parametrize("n_langs", [2, 8])
def test_challenge_subset(n_langs):
    from engine.pipelines.retrieval.subset import SUBSET_SETS, subset_figure

    rows = [
        (a, b, layer, "seqsim", name, "R@1", 0.5, 0.4, 0.6, 0.1, 30, 1)
        for a, b in itertools.permutations(LANGS[:n_langs], 2)
        for layer in range(4)
        for name in SUBSET_SETS
    ]
    title = assert_names_source(subset_figure(rows, "R@1", f"{SOURCE}; subset hard"), "subset hard")
    assert "n = 30 ids (full), 30 ids (challenge)" in title
