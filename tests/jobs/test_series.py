"""A training series through a study and the series job (issue 84): ``random-model --series``'s offline steps of a
random OWLS (2 blocks x 64; step k of 3 interpolates from a random start to the final model, so step 3 is the final
model's weights), each encoded in a matrix combination, the final model encoded once beside them, then ``jobs.series``
after the matrix, reading each step's language ID from a probes folder planted beside it (``jobs.probes``'s lid.csv:
the series job's reading of existing results; its own probe is ``stages.lid``, which the probes tests check). The
stages run as the study runner starts them, each a job process of its own (forked from the test's fork server, which
has the heavy libraries imported: ``tests/jobs/conftest.py``).

Checks: the last step's store holds the final model's states exactly, and its CKA with the final model is 1 at every
layer (float32 rounding: 1e-6) while the earlier steps' is below; every CKA row equals linear CKA recomputed in float64
NumPy from the stores' states, by the papers' Gram formula (``kernels.cka.reference_linear_cka``) and by the feature
formula ``|Y^T X|_F^2 / (|X^T X|_F |Y^T Y|_F)`` written here; the pooled R@1 rows are their pairs' means; the meeting
layer is the rule's; every table has the columns docs/outputs.md names (``tests/test_outputs_doc.py``)."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pytest

from engine.pipelines.series.run import COLUMNS
from engine.stores.integrity import write_outputs
from engine.stores.kv import open_kvstore
from engine.stores.reader import open_store
from engine.stores.records import json_bytes
from kernels.cka import reference_linear_cka
from tests.jobs.test_studies import babelgrid, clips, lines

STUDY = """
vars:
  out: unset
  steps: unset
  final: unset
  data: unset
  probes: unset
matrix:
  step: [1, 2, 3]
stages:
  - encode: {out: "{out}/final", model: "{final}", dataset: "folder:{data}", progress: false}
  - encode: {out: "{run}/store", model: "{steps}@step={step}", dataset: "folder:{data}", progress: false}
after:
  - series: {stores: {each: "{run}/store"}, reference: "{out}/final", probes: {each: "{probes}/{step}"},
             out: "{out}/series", progress: false}
"""


# The probes job's lid.csv of each step, planted: its language ID is read, not run here (the probe's L-BFGS fits cost
# about 2 s a layer on this machine; stages.lid is tested with the probes job). Chance 0.5: two languages.
LID = {
    step: "layer,accuracy,macro_f1,n,chance\n" + "".join(f"{layer},{a},{a},6,0.5\n" for layer, a in enumerate(acc))
    for step, acc in {1: (0.5, 0.5, 0.5, 0.5), 2: (1.0, 0.8333333333333334, 0.6666666666666666, 0.5),
                      3: (0.5, 0.6666666666666666, 1.0, 1.0)}.items()
}  # fmt: skip


def _table(path: pathlib.Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def series(tmp_path_factory, run_job) -> pathlib.Path:
    """The study run once: its ``out`` folder."""
    import jobs.studies.run as runner
    from engine.models.random_series import write_random_series

    root = tmp_path_factory.mktemp("series-study")
    written = write_random_series(root / "owls_random", 3)
    data = clips(root / "clips")

    def call(command):  # [python, -m, jobs.<job>, flags...]: the job as its own process, forked
        return run_job(command[2].removeprefix("jobs."), *command[3:], expect=None).returncode

    for step in (1, 2, 3):
        _, kv = open_kvstore(str(root / "probes" / str(step)))
        manifest = {"format": "babelgrid-probes", "store": str(root / "out" / str(step) / "store")}
        write_outputs(kv, {"lid.csv": LID[step].encode(), "manifest.json": json_bytes(manifest)},
                      str(root / "probes" / str(step)))  # fmt: skip
    (root / "study.yaml").write_text(STUDY)
    settings = [
        f"out={root / 'out'}",
        f"steps={written.steps_folder}",
        f"final={written.final}",
        f"data={data}",
        f"probes={root / 'probes'}",
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "run_stage", lambda command: (call(command), None))
        proc = babelgrid("study.yaml", *(x for s in settings for x in ("--set", s)), cwd=root)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    said = lines(proc)
    assert list(said) == ["1 encode", "1/2 encode", "2/2 encode", "3/2 encode", "3 series"], said
    # the run's end in one line (a newcomer had to scroll back through the last stage's file list)
    end = proc.stdout.strip().splitlines()[-1]
    assert end.startswith("babelgrid run: 5 stages, 5 run and 0 complete before, in ") and "/series" in end, end
    return root / "out"


def _pooled(store, layer: int) -> dict[tuple, np.ndarray]:
    """(lang, id, recording) -> the utterance's states averaged over its valid frames, float64."""
    out = {}
    for lang in store.languages():
        for u, row in enumerate(store.arrays(lang).rows):
            out[lang, row.id, int(row.recording)] = np.asarray(store.states(lang, u, layer), np.float64).mean(axis=0)
    return out


def _feature_cka(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(axis=0), y - y.mean(axis=0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def test_the_last_step_is_the_final_model_and_its_cka_is_1(series):
    final, last = open_store(str(series / "final")), open_store(str(series / "3" / "store"))
    assert last.info.dims.to_dict()["config"]["training_step"] == 3
    for lang in final.languages():
        for layer in final.info.layers:
            np.testing.assert_array_equal(last.language_layer(lang, layer)[0], final.language_layer(lang, layer)[0])
    rows = _table(series / "series" / "cka.csv")
    by_step = {s: [float(r["cka"]) for r in rows if r["step"] == s] for s in ("1", "2", "3")}
    assert len(by_step["3"]) == len(final.info.layers), rows
    assert all(abs(v - 1) <= 1e-6 for v in by_step["3"]), by_step
    assert min(by_step["1"]) < 1 - 1e-3 and min(by_step["2"]) < 1 - 1e-3, by_step


def test_cka_rows_equal_two_numpy_formulas(series):
    final = open_store(str(series / "final"))
    for row in _table(series / "series" / "cka.csv"):
        assert row["layer"] == row["reference_layer"] and row["reference"] == final.info.model_name, row
        store = open_store(str(series / row["step"] / "store"))
        mine, theirs = _pooled(store, int(row["layer"])), _pooled(final, int(row["reference_layer"]))
        keys = sorted(mine)
        x, y = np.stack([mine[k] for k in keys]), np.stack([theirs[k] for k in keys])
        assert int(row["n"]) == len(keys)
        assert float(row["cka"]) == pytest.approx(reference_linear_cka(x, y), abs=1e-5), row
        assert float(row["cka"]) == pytest.approx(_feature_cka(x, y), abs=1e-5), row


def test_every_table_has_its_columns_and_a_row_per_step_and_layer(series):
    out = series / "series"
    for name, columns in COLUMNS.items():
        with open(out / name, newline="") as f:
            assert tuple(next(csv.reader(f))) == columns, name
        assert (out / f"{name}.sha256").is_file()
    for png in ("heatmaps.png", "best_layer.png"):
        assert (out / "figures" / png).stat().st_size > 1000
    n_layers = len(open_store(str(series / "final")).info.layers)
    assert len(_table(out / "lid.csv")) == len(_table(out / "cka.csv")) == 3 * n_layers
    retrieval = _table(out / "retrieval.csv")
    for step in ("1", "2", "3"):
        for layer in range(n_layers):
            at = [r for r in retrieval if r["step"] == step and r["layer"] == str(layer)]
            pairs, pooled = [r for r in at if r["lang_a"] != "all"], [r for r in at if r["lang_a"] == "all"]
            assert {(r["lang_a"], r["lang_b"]) for r in pairs} == {("de", "en"), ("en", "de")}, at
            assert float(pooled[0]["r1"]) == pytest.approx(np.mean([float(r["r1"]) for r in pairs]), abs=1e-12)
    centred = [r for r in _table(out / "centred.csv") if r["lang_a"] != "all"]
    for r in centred:
        assert float(r["delta"]) == pytest.approx(float(r["centred_r1"]) - float(r["r1"]), abs=1e-12)
    lid = _table(out / "lid.csv")
    for step, text in LID.items():
        planted = [line.split(",") for line in text.splitlines()[1:]]
        got = [(r["layer"], float(r["accuracy"]), r["source"]) for r in lid if r["step"] == str(step)]
        assert got == [(layer, float(a), "probes") for layer, a, *_ in planted], got
    meet = _table(out / "meet.csv")
    best = {r["step"]: r for r in _table(out / "best.csv")}
    assert sorted(best) == ["1", "2", "3"]
    for step in best:
        own = [r for r in meet if r["step"] == step]
        score = [min(float(r["alignment"]), float(r["separability"])) for r in own]
        chosen = [r["layer"] for r in own if r["chosen"] == "True"]
        assert chosen == [own[int(np.argmax(score))]["layer"]] == [best[step]["meet_layer"]], own


def test_a_model_of_another_depth_is_matched_by_depth_the_shallower_on_ties():
    from engine.pipelines.series.read import Member, matched_layer

    small = Member("small", 1, None, (0, 1, 2, 3), lambda layer: layer / 4)
    big = Member("big", 2, None, tuple(range(8)), lambda layer: layer / 8)
    assert [matched_layer(small, layer, big) for layer in small.layers] == [0, 2, 4, 6]
    assert [matched_layer(big, layer, small) for layer in big.layers] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [matched_layer(big, layer, big) for layer in big.layers] == list(big.layers)
    # 1/4 - 1/6 and 1/3 - 1/4 are equal, but not in floats: still a tie
    thirds = Member("thirds", 3, None, tuple(range(6)), lambda layer: layer / 6)
    assert [matched_layer(small, layer, thirds) for layer in small.layers] == [0, 1, 3, 4]


def test_an_owsm_stores_after_norm_sits_at_depth_one():
    """OWSM stores hold L blocks and after_norm (L + 1): the default depth took them for L + 1 blocks and put
    after_norm at (L + 1) / (L + 2), so a ladder of OWLS sizes matched a 2-block model's after_norm to a 4-block
    model's last block (a probe's series)."""
    import types

    from engine.models.family import FAMILIES
    from engine.stores.schema import StoreDims

    for blocks in (2, 4):
        dims = StoreDims.from_dict({"n_layers_out": blocks + 2, "embed": 8, "config": {}})
        depth = FAMILIES["owsm"].store_depth(types.SimpleNamespace(dims=dims, n_blocks=dims.n_blocks))
        assert [depth(layer) for layer in range(blocks + 2)] == [layer / (blocks + 1) for layer in range(blocks + 2)]
        assert depth(blocks + 1) == 1.0


def test_the_documented_series_studies_load(series, tmp_path):
    """docs/dynamics.md's offline study and its OWLS steps study: every key a flag of its job, the final model's
    encode once, the series stage after the matrix reading every step's store. (After the module's study run: the
    jobs' flags are listed already in this process.)"""
    from jobs.studies.graph import dependencies
    from jobs.studies.spec import load_study

    text = (pathlib.Path(__file__).resolve().parents[2] / "docs" / "dynamics.md").read_text()
    offline = text[text.index("<<'EOF'\n") + 8 : text.index("\nEOF\n")]
    start = text.index("# owls-steps.yaml")
    for name, body in (("offline", offline), ("owls", text[start : text.index("```", start)])):
        (tmp_path / f"{name}.yaml").write_text(body)
        study = load_study(str(tmp_path / f"{name}.yaml"))
        assert [s.name for s in study.stages] == ["1", "1/2", "2/2", "3/2", "3"], name
        last = study.stages[-1]
        assert last.job == "series" and len(last.flags["stores"].split(",")) == 3, last
        assert {a.name for _, a in dependencies(study.stages)[last.name]} == {"1", "1/2", "2/2", "3/2"}, name


def test_meets_score_is_na_where_either_curve_is():
    """A layer without LID (a probe's typology with another model's probes) had score min(alignment, NaN) = its
    alignment in meet.csv; the documented rule: a layer missing either curve is not a candidate, and its score NA."""
    from engine.pipelines.stages.meet import curve

    c = curve("m", [1, 2], [0.5, 1.0], [0.6, 0.8], [0.25, 0.25], {1: (0.9, 0.5)})
    rows = c.rows()
    assert np.isfinite(rows[0][9]) and np.isnan(rows[1][9]) and rows[0][10] and not rows[1][10], rows


def test_probes_of_other_languages_than_the_series_are_refused(tmp_path):
    """A probe's series --langs en,de read a probes folder of en, de, fr: meet.csv set a 3-language separability
    against a 2-language alignment."""
    import json
    import types

    from engine.pipelines.series.config import SeriesError
    from engine.pipelines.series.read import read_lid

    store = types.SimpleNamespace(url=str(tmp_path / "store"), languages=lambda: ["de", "en", "fr"])
    (tmp_path / "store").mkdir()
    (tmp_path / "probes").mkdir()
    (tmp_path / "probes" / "manifest.json").write_text(json.dumps({"format": "babelgrid-probes", "store": store.url}))
    with pytest.raises(SeriesError, match=r"probed languages \['de', 'en', 'fr'\], the series measures \['de', 'en'\]"):
        read_lid(str(tmp_path / "probes"), store, ["en", "de"])


def test_retrieval_folders_given_out_of_order_are_refused(tmp_path):
    """series --stores s1,s2 --retrieval ret_s2,ret_s1 put step 2's R@1 on step 1 without a word (a probe's):
    a retrieval folder records the layer store it scored, and series checks it against the member's store."""
    import json

    from engine.pipelines.series.config import SeriesError
    from engine.pipelines.series.read import read_retrieval

    folder = tmp_path / "ret_s2"
    folder.mkdir()
    (folder / "retrieval.json").write_text(json.dumps({"format": "babelgrid-retrieval", "layer_store": "/x/s2"}))
    with pytest.raises(SeriesError, match=r"scored the similarity of '/x/s2', not of '/x/s1'"):
        read_retrieval(str(folder), "seqsim", ["de", "en"], "/x/s1")


def test_the_summary_says_when_langs_cut_the_shared_set_or_a_store_shares_no_audio():
    """series said nothing when --langs left out languages every store holds, or when a store shared no audio with
    the reference (its CKA NA): both are notes of the summary now."""
    import types

    from engine.pipelines.series.run import SeriesSummary, _notes

    def member(name, langs):
        return types.SimpleNamespace(name=name, reader=types.SimpleNamespace(languages=lambda: langs))

    series = [member("a", ["de", "en", "fr"]), member("b", ["de", "en", "fr"])]
    cka = {"cka.csv": [("a", 1, 0, 0.0, "b", 0, 0.0, 0.5, 12), ("b", 2, 0, 0.0, "b", 0, 0.0, float("nan"), 0)]}
    notes = _notes(None, series, series[1], ["de", "en"], cka)
    assert notes[0] == "--langs left out fr, which every store holds: the tables measure de, en only", notes
    assert notes[1].startswith("b shares no utterance (language, id, recording) with the reference b"), notes
    shared = {"cka.csv": [cka["cka.csv"][0], ("b", 2, 0, 0.0, "b", 0, 0.0, 1.0, 12)]}
    assert _notes(None, series, series[1], ["de", "en", "fr"], shared) == []
    best = [("a", 1, None, None, float("nan"), None, None, float("nan"))]
    text = SeriesSummary(tables={"best.csv": best}, notes=notes).report()
    assert "best R@1 NA (no pair with queries); meet: none" in text and "note: --langs left out fr" in text, text
