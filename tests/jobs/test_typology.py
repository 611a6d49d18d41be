"""The typology job against code we did not write.

- Mantel: r and p equal scikit-bio's ``mantel`` (same seed, so the same permutations), Pearson and Spearman, on random
  matrices and on the matrices the job wrote; the partial Mantel equals a loop that regresses geography out of both
  matrices and correlates the residuals (vegan's ``mantel.partial``; scikit-bio has none), permutation by permutation.
- URIEL: the cosine distances equal scipy's ``cosine`` on lang2vec's own feature vectors; the genetic rule on the
  family-node names lang2vec lists; a place located from distances to the anchors is the place they were made from.
- The job on a similarity store planted so that languages of one family retrieve each other better: each matrix CSV
  is 1 - R@1 recomputed by ``kernels.metrics.reference_retrieval_metrics`` (both directions, averaged), the genetic
  correlation is strong and significant, a language URIEL lacks is named, and the meeting layer is the rule's.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import re

import jax
import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats

from engine.figures import png_title
from engine.pipelines.typology import mantel as mantel_module
from engine.pipelines.typology import uriel
from engine.pipelines.typology.config import TypologyConfig, TypologyError
from engine.pipelines.typology.plan import plan_typology_run
from engine.pipelines.typology.run import TYPOLOGY_COLUMNS, run_typology
from engine.runtime.options import configure
from engine.stores.integrity import write_outputs
from engine.stores.kv import open_kvstore
from engine.stores.records import json_bytes
from engine.stores.similarity import SimilarityStore, done_marker, new_manifest
from kernels.metrics import reference_retrieval_metrics


def skbio_mantel(*args, **kw):
    """scikit-bio's ``mantel``. Importing scikit-bio switches JAX to 64 bits for the whole process
    (``skbio.util._testing`` probes its array backends at import), so the flag is put back."""
    x64 = jax.config.jax_enable_x64
    import skbio.stats.distance

    jax.config.update("jax_enable_x64", x64)
    return skbio.stats.distance.mantel(*args, **kw)


LAYERS = (0, 1, 2)
LANGS = ("de", "en", "es", "it", "pl", "ru", "sv", "xx")  # xx: no ISO 639-3 code, so not in URIEL
IDS = [f"s{i}" for i in range(12)]
FAMILY = {"de": 0, "en": 0, "sv": 0, "es": 1, "it": 1, "pl": 2, "ru": 2, "xx": 3}
SIGNAL = {0: 0.0, 1: 1.0, 2: 2.5}  # layer 2 retrieves best; within a family translations stand out more


def _random_distances(rng, n):
    points = rng.standard_normal((n, 3))
    return np.linalg.norm(points[:, None] - points[None], axis=-1)


@pytest.mark.parametrize("method", ["pearson", "spearman"])
@pytest.mark.parametrize("n", [6, 9])  # distances of random points: no ties (mantel._p_values)
def test_mantel_equals_scikit_bio(method, n):
    rng = np.random.default_rng(n)
    x = _random_distances(rng, n)
    ys = np.stack([x + 0.7 * _random_distances(rng, n), _random_distances(rng, n)])
    ours = mantel_module.mantel(x, ys, permutations=499, seed=3, method=method)
    for k, y in enumerate(ys):
        r, p, count = skbio_mantel(x, y, method=method, permutations=499, seed=3)
        assert ours.r[k] == pytest.approx(r, abs=1e-12) and ours.p_value[k] == p and count == n


def _residual(v, z):
    design = np.stack([np.ones_like(z), z], axis=1)
    return v - design @ np.linalg.lstsq(design, v, rcond=None)[0]


def test_partial_mantel_equals_a_residual_loop():
    rng = np.random.default_rng(0)
    n, permutations = 7, 199
    x, z = _random_distances(rng, n), _random_distances(rng, n)
    y = x + z + 0.5 * _random_distances(rng, n)
    ours = mantel_module.partial_mantel(x, y, z, permutations=permutations, seed=5)
    iu = np.triu_indices(n, k=1)
    zf, yf = z[iu], y[iu]
    stats = []
    for order in mantel_module.permutations_of(n, permutations, 5):  # the identity, then scikit-bio's draws
        xf = x[np.ix_(order, order)][iu]
        stats.append(np.corrcoef(_residual(xf, zf), _residual(yf, zf))[0, 1])
    stats = np.array(stats)
    assert ours.r[0] == pytest.approx(stats[0], abs=1e-10)
    assert ours.p_value[0] == (1 + np.sum(np.abs(stats[1:]) >= np.abs(stats[0]) - 1e-12)) / (permutations + 1)


def test_partial_mantel_of_three_languages_is_na():
    """Three languages give three pairs: their residuals on z leave one degree of freedom, so r was +-1 whatever the
    data (a probe's run reported 1.0000000000000009)."""
    rng = np.random.default_rng(1)
    x, y, z = (_random_distances(rng, 3) for _ in range(3))
    result = mantel_module.partial_mantel(x, y, z, permutations=99, seed=0)
    assert np.isnan(result.r).all() and np.isnan(result.p_value).all()


def test_ties_count_as_extreme():
    """Spearman on 4 languages: 6 ranks, so permutations often tie the observed r in arithmetic. Every tie counts
    (an exact count over the 24 orderings, in integers: r is a function of the sum of squared rank differences)."""
    x = np.array([[0, 1, 2, 3], [1, 0, 4, 5], [2, 4, 0, 6], [3, 5, 6, 0]], float)
    y = np.array([[0, 2, 1, 3], [2, 0, 5, 4], [1, 5, 0, 6], [3, 4, 6, 0]], float)
    ours = mantel_module.mantel(x, y, permutations=20, seed=0, method="spearman")  # 20 of the 24 orderings drawn
    iu = np.triu_indices(4, k=1)
    ranks_y = scipy.stats.rankdata(y[iu])
    observed = np.sum((scipy.stats.rankdata(x[iu]) - ranks_y) ** 2)
    mean = 35.0  # 6 ranks: r = 1 - 6 d2 / (6 (36 - 1)), so |r| depends on |d2 - 35| alone

    def extreme(orders):
        d2 = [np.sum((scipy.stats.rankdata(x[np.ix_(o, o)][iu]) - ranks_y) ** 2) for o in orders]
        return np.sum(np.abs(np.array(d2) - mean) >= abs(observed - mean))

    assert ours.p_value[0] == (1 + extreme(mantel_module.permutations_of(4, 20, 0)[1:])) / 21
    # 2000 asked of 24 orderings: each taken once, the exact test (drawn, p fell below 1/24, a probe's)
    exact = mantel_module.mantel(x, y, permutations=2000, seed=0, method="spearman")
    every = list(itertools.permutations(range(4)))
    assert exact.permutations == 23 and exact.p_value[0] == extreme(every) / 24 >= 1 / 24


def test_mantel_refuses_what_it_cannot_test():
    with pytest.raises(mantel_module.MantelError, match="3 or more"):
        mantel_module.mantel(np.zeros((2, 2)), np.zeros((2, 2)))
    bad = np.ones((4, 4))
    bad[0, 1] = np.nan
    with pytest.raises(mantel_module.MantelError, match="finite"):
        mantel_module.mantel(np.ones((4, 4)), bad)
    assert mantel_module.min_p_value(4, 9999) == pytest.approx(1 / 24)


def test_uriel_distances_are_lang2vec_features_by_scipy():
    # The planted store's languages: lang2vec's lookups (seconds each) are cached for the job's run in this process.
    found = uriel.uriel_distances([*LANGS[:-1], "zz"], ("syntactic", "featural", "genetic"))
    assert found.languages == LANGS[:-1] and found.codes == ("deu", "eng", "spa", "ita", "pol", "rus", "swe")
    assert "zz" in found.missing and "not in URIEL" in found.missing["zz"]
    l2v = uriel._lang2vec()
    features = l2v.get_features(list(found.codes), "syntax_knn")
    expected = scipy.spatial.distance.cosine(features["deu"], features["ita"])
    assert found.matrices["syntactic"][0, 3] == pytest.approx(expected, abs=1e-12)
    fam = l2v.get_features(list(found.codes), "fam", header=True)
    nodes = {c: {name for name, v in zip(fam["CODE"], fam[c], strict=True) if v == 1} for c in found.codes}
    shared = len(nodes["deu"] & nodes["eng"]) / max(len(nodes["deu"]), len(nodes["eng"]))
    assert found.matrices["genetic"][0, 1] == pytest.approx(1 - shared) and 0 < shared < 1
    for matrix in found.matrices.values():
        np.testing.assert_allclose(matrix, matrix.T)
        assert (np.diag(matrix) == 0).all()


def test_lang2vec_reads_its_archives_once_and_finds_what_its_own_numpy_does():
    """uriel hands lang2vec a numpy whose ``load`` reads an archive's arrays once (lang2vec re-reads a member per
    index inside its loops: seconds a lookup): its features and its language list are those of plain numpy."""
    l2v = uriel._lang2vec()
    assert isinstance(l2v.np, uriel._NumpyReadingArchivesOnce)
    codes = ["deu", "eng", "ita"]
    ours = l2v.get_features(codes, "geo", header=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(l2v, "np", np)
        theirs = l2v.get_features(codes, "geo", header=True)
        assert l2v.available_uriel_languages() == l2v.URIEL_LANGUAGES  # what the import computed, archives read once
    assert ours.keys() == theirs.keys() and all(list(ours[k]) == list(theirs[k]) for k in ours)


def test_a_place_is_found_from_its_distances_to_the_anchors():
    rng = np.random.default_rng(1)
    anchors = np.stack([rng.uniform(-85, 85, 60), rng.uniform(-180, 180, 60)], axis=1)
    place = np.array([48.1, 11.6])  # Munich
    distances = uriel._angles(uriel._unit(*place)[None], uriel._unit(anchors[:, 0], anchors[:, 1]))[0]
    found, misfit = uriel.locate(distances, anchors)
    assert misfit < 1e-6
    assert uriel._angles(uriel._unit(*found)[None], uriel._unit(*place)[None])[0, 0] * 20015 < 1.0  # km


def _planted(a, b, layer, rng):
    same = FAMILY[a] == FAMILY[b]
    signal = SIGNAL[layer] * (1.5 if same else 0.6)
    return (rng.standard_normal((len(IDS), len(IDS))) + signal * np.eye(len(IDS))).astype(np.float32)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """(similarity store, probes folder, {(a, b): f32[layer, n, n]})."""
    root = tmp_path_factory.mktemp("typology")
    sim = root / "sim"
    manifest = new_manifest(layer_store=str(root / "layers"), model_name="planted", checkpoint_sha256="0" * 64,
                            layers=LAYERS)  # fmt: skip
    store = SimilarityStore.create_or_open(str(sim), manifest)
    rng = np.random.default_rng(0)
    matrices = {}
    ids = {"row_ids": IDS, "col_ids": IDS, "row_recording": list(range(len(IDS))),
           "col_recording": list(range(len(IDS)))}  # fmt: skip
    marker = done_marker(np.arange(len(IDS)), np.arange(len(IDS)))
    for i, a in enumerate(LANGS):
        for b in LANGS[i + 1 :]:
            array = store.create_pair("seqsim", a, b, ids)
            scores = np.stack([_planted(a, b, layer, rng) for layer in LAYERS])
            for position, layer in enumerate(LAYERS):
                store.write_layer(array, "seqsim", a, b, layer, scores[position], marker)
            matrices[a, b] = scores
    probes = root / "probes"
    lid = "layer,accuracy,macro_f1,n,chance\n0,0.95,0.95,96,0.125\n1,0.6,0.6,96,0.125\n2,0.3,0.3,96,0.125\n"
    _, kv = open_kvstore(str(probes))
    write_outputs(kv, {"lid.csv": lid.encode(), "manifest.json": json_bytes(
        {"format": "babelgrid-probes", "store": str(root / "layers")})}, str(probes))  # fmt: skip
    return sim, probes, matrices


def _read(path):
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _config(sim, out, **kw):
    return configure(TypologyConfig, similarity=str(sim), out=str(out), permutations=199, **kw)


@pytest.fixture(scope="module")
def job(planted, tmp_path_factory):
    sim, probes, _ = planted
    out = tmp_path_factory.mktemp("typology-out") / "out"
    return out, run_typology(_config(sim, out, probes=(str(probes),)))


def test_the_matrices_are_one_minus_r1_recomputed(job, planted):
    out, _ = job
    _, _, matrices = planted
    for position, layer in enumerate(LAYERS):
        rows = _read(out / "matrices" / f"seqsim-r1-layer-{layer}.csv")
        langs = [r["language"] for r in rows]
        assert langs == [lang for lang in LANGS if lang != "xx"]  # URIEL has no xx
        for row in rows:
            for b in langs:
                a = row["language"]
                if a == b:
                    assert float(row[b]) == 0
                    continue
                m = matrices[(a, b) if (a, b) in matrices else (b, a)][position]
                m = m if (a, b) in matrices else m.T
                r1 = [reference_retrieval_metrics(s, IDS, IDS, ks=(1,)).recall[1] for s in (m, m.T)]
                assert float(row[b]) == pytest.approx(1 - np.mean(r1), abs=1e-5)


def test_typology_csv_equals_scikit_bio_on_the_written_matrices(job):
    out, summary = job
    rows = _read(out / "typology.csv")
    assert tuple(rows[0]) == TYPOLOGY_COLUMNS
    assert len(rows) == len(LAYERS) * 2 * 6  # layers x (r1, gap) x URIEL distances
    for row in rows:  # every measure (the gap distances, all near 1, were the ones 6 digits moved) and distance
        ours = _read(out / "matrices" / f"{row['measure']}-layer-{row['layer']}.csv")
        theirs = _read(out / "matrices" / f"uriel-{row['distance']}.csv")
        langs = [r["language"] for r in ours]
        x = np.array([[float(r[b]) for b in langs] for r in theirs])
        y = np.array([[float(r[b]) for b in langs] for r in ours])
        r, p, n = skbio_mantel(x, y, permutations=199, seed=0)
        # The matrices are written at full precision: the table is recomputed from them, not approached.
        assert float(row["r"]) == pytest.approx(r, abs=1e-9) and float(row["p_value"]) == pytest.approx(p)
        assert int(row["n_languages"]) == n == 7
    p = np.array([float(r["p_value"]) for r in rows])
    np.testing.assert_allclose([float(r["q_value"]) for r in rows], scipy.stats.false_discovery_control(p))
    genetic = [r for r in rows if r["measure"] == "seqsim-r1" and r["distance"] == "genetic" and r["layer"] == "2"]
    assert float(genetic[0]["r"]) > 0.5 and float(genetic[0]["p_value"]) < 0.05
    geographic = [r for r in rows if r["distance"] == "geographic"]
    assert all(r["partial_r"] == "NA" for r in geographic)  # geography is not controlled for itself
    assert summary.missing == {"xx": "not in URIEL (tried no ISO 639-3 code known for it)"}
    languages = _read(out / "languages.csv")
    assert {r["language"]: r["status"] for r in languages}["xx"].startswith("not in URIEL")


def test_figures_and_the_meeting_layer(job):
    out, summary = job
    for name in ("typology_by_layer", "dendrogram", "meet"):
        assert png_title((out / "figures" / f"{name}.png").read_bytes())
    rows = _read(out / "meet.csv")
    # Alignment rises with depth, separability falls: the rule picks the layer where the smaller is largest
    alignment = np.array([float(r["alignment"]) for r in rows])
    separability = np.array([(a - 0.125) / (1 - 0.125) for a in (0.95, 0.6, 0.3)])
    np.testing.assert_allclose([float(r["separability"]) for r in rows], separability)
    chosen = [r["layer"] for r in rows if r["chosen"] == "True"]
    assert chosen == [str(LAYERS[int(np.argmax(np.minimum(alignment, separability)))])]
    assert summary.dendrogram_layer == 2  # where mean R@1 is highest
    assert "left out: xx" in summary.report()


def test_refusals(planted, tmp_path, job):
    sim, probes, _ = planted
    out, _ = job
    with pytest.raises(TypologyError, match="settings|differ"):
        run_typology(configure(TypologyConfig, similarity=str(sim), out=str(out), permutations=99))
    with pytest.raises(TypologyError, match="3 or more"):
        run_typology(_config(sim, tmp_path / "two", langs=("de", "en")))
    with pytest.raises(TypologyError, match="no layer"):
        run_typology(_config(sim, tmp_path / "layer", layers=(9,)))
    with pytest.raises(TypologyError, match="--compare needs --probes"):
        _config(sim, tmp_path / "c", compare=str(tmp_path / "cmp"))
    with pytest.raises(TypologyError, match="one, for the similarity store's model"):
        run_typology(_config(sim, tmp_path / "p2", probes=(str(probes), str(probes))))
    # Another model's probes: a probe's whisper-base retrieval was paired with a random OWLS's LID, without a word
    other = tmp_path / "other-probes"
    _, kv = open_kvstore(str(other))
    write_outputs(kv, {"lid.csv": (probes / "lid.csv").read_bytes(), "manifest.json": json_bytes(
        {"format": "babelgrid-probes", "store": str(tmp_path / "elsewhere")})}, str(other))  # fmt: skip
    with pytest.raises(TypologyError, match=r"was run on .*elsewhere.*, but the similarity store was computed from"):
        run_typology(_config(sim, tmp_path / "p3", probes=(str(other),)))


def test_plan_counts_the_matrices_and_tests_and_writes_nothing(planted, tmp_path):
    """--plan: every stored matrix of the run's layers (28 pairs x 3 layers, xx's included: the run reads them before
    it leaves xx out), the Mantel tests over the 7 languages URIEL has, each stage timed, a total, no output folder."""
    sim, _, _ = planted
    out = tmp_path / "never"
    plan = plan_typology_run(_config(sim, out), None)
    text = plan.render()
    assert not out.exists()
    assert [s.name for s in plan.stages] == ["read + score", "uriel (lang2vec)", "mantel tests"], text
    assert all(s.seconds_here > 0 for s in plan.stages), text
    assert re.search(r"\n  total +\S+ [KMGT]? .* \d+(\.\d+)? (ms|s|min|h)\n", text), text
    pairs = len(LANGS) * (len(LANGS) - 1) // 2
    assert f"matrices: {pairs * len(LAYERS)} read and scored both ways ({pairs * len(LAYERS) * len(IDS) ** 2:,} cells"\
        in text, text  # fmt: skip
    assert "languages: 7 of 8 in URIEL; left out: xx" in text, text
    assert "Mantel tests: 12 over the layers, 10 partial (geography held fixed); 199 permutations of 21" in text, text
    assert plan.stages[0].bytes_read == pairs * len(LAYERS) * len(IDS) ** 2 * 4


def test_every_model_of_a_compare_run(planted, tmp_path):
    """--compare: a curve per model from its by_depth.csv, each with the probes folder run on its store; a model
    without one has no separability, so no meeting layer (said, not guessed)."""
    sim, probes, _ = planted
    layers = str(json.loads((probes / "manifest.json").read_text())["store"])
    cmp = tmp_path / "cmp"
    rows = ["model,layer,depth,lang_a,lang_b,measure,metric,value,random,n"]
    for model, depth_of in (("base", 2), ("other", 4)):
        for layer in range(depth_of + 1):
            rows.append(f"{model},{layer},{layer / depth_of},all,all,mean,R@1,{0.1 + 0.2 * layer},0.05,96")
    _, kv = open_kvstore(str(cmp))
    write_outputs(
        kv,
        {
            "by_depth.csv": ("\n".join(rows) + "\n").encode(),
            "manifest.json": json_bytes(
                {"format": "babelgrid-compare", "stores": [layers, str(tmp_path / "other")], "names": None}
            ),
        },
        str(cmp),
    )
    summary = run_typology(_config(sim, tmp_path / "out", compare=str(cmp), probes=(str(probes),)))
    meet = _read(tmp_path / "out" / "meet.csv")
    assert [r["model"] for r in meet] == ["base"] * 3 + ["other"] * 5
    assert [r["depth"] for r in meet if r["model"] == "other"] == ["0.0", "0.25", "0.5", "0.75", "1.0"]
    assert all(r["separability"] == "NA" and r["chosen"] == "False" for r in meet if r["model"] == "other")
    assert "other: no layer has both" in summary.report()
