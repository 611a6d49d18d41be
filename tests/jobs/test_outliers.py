"""The outliers job on a planted layer store: the planted dimension is found, and every number of its row (share of the
squared norm, of the pooled and of SeqSim's cosine between translations, anisotropy, effective rank) equals a NumPy
or SciPy computation written here from the stored states; NA without translations; --plan; resume and refusals.

The store (``planted``): 3 languages of 6 shared sentence ids (en reads s0 twice, de has one id of its own, en one
utterance never encoded), 32 dimensions at layers 0, 2 and 3. Each id's frames are one pattern shared by its
translations plus noise; at layer 3 dimension ``BIG`` is massive (large, of one sign) in every language."""

from __future__ import annotations

import csv
import pathlib

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from engine.pipelines.outliers import measure
from engine.pipelines.outliers import run as outliers_run
from engine.pipelines.outliers.config import OutliersConfig, OutliersError
from engine.pipelines.outliers.table import DIMENSION_COLUMNS, OUTLIER_COLUMNS
from engine.runtime.options import configure
from engine.stores.layers import LayerStore
from engine.stores.reader import open_store
from engine.stores.schema import StoreInfo
from engine.stores.utterances import UtteranceRow
from tests.engine.test_store import DIMS

LANGS = ("de", "en", "es")
LAYERS = (0, 2, 3)
BIG = 7  # the planted dimension (layer 3)
INFO = StoreInfo("planted-outliers", "0" * 64, DIMS, LAYERS, "float32")


def _rows(lang: str) -> list[tuple[str, int, int]]:
    """(id, recording, frames) of each utterance of ``lang``."""
    rows = [(f"s{s}", 0, 8 + (3 * s + len(lang)) % 11) for s in range(6)]
    if lang == "de":
        rows.append(("d6", 0, 9))  # shared with no other language
    if lang == "en":
        rows += [("s0", 1, 12), ("s9", 0, 10)]  # a second reading of s0; s9 is never encoded
    return rows


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("outliers")
    url = str(root / "store")
    store = LayerStore.create_or_open(url, INFO, creation={"dataset": "planted-outliers"})
    rng = np.random.default_rng(0)
    d = INFO.embed
    pattern = {f"s{s}": rng.standard_normal((20, d)) for s in range(6)} | {"d6": rng.standard_normal((20, d))}
    for lang in LANGS:
        rows = [UtteranceRow(id=i, lang=lang, path=f"/{lang}/{i}-{r}.wav", duration_s=n / 50, n_frames=n, n_windows=1,
                             recording=r) for i, r, n in _rows(lang)]  # fmt: skip
        arrays = store.language(lang, rows)
        offset = rng.standard_normal(d) * 0.5
        for u, (i, _, n) in enumerate(_rows(lang)):
            if i == "s9":
                continue
            x = np.zeros((len(LAYERS), n, d), np.float32)
            x[0] = rng.standard_normal((n, d))  # layer 0: noise
            x[1] = pattern[i][:n] + 0.6 * rng.standard_normal((n, d)) + offset
            x[2] = x[1] + 0.3 * rng.standard_normal((n, d))
            x[2][:, BIG] = 25.0 + 2.0 * rng.standard_normal(n)  # layer 3: the massive dimension
            arrays.write_utterance(u, x)
        arrays.flush()
    return root / "store"


def _read(path: pathlib.Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _done_frames(store, lang: str, layer: int) -> tuple[list[np.ndarray], list[str], np.ndarray]:
    """The valid frames of each done utterance (float64), their ids, and their lengths, in store order."""
    states, lengths = store.language_layer(lang, layer, dtype=np.float32)
    ids = store.utterances_table(lang).column("id").to_pylist()
    done = np.flatnonzero(lengths > 0)
    return [states[u, : lengths[u]].astype(np.float64) for u in done], [ids[u] for u in done], lengths[done]


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def twin(store, lang: str, layer: int, frame_pairs: int, seed: int) -> dict:
    """Every number of ``lang``'s row at ``layer``, computed here in NumPy/SciPy from the stored states."""
    own, own_ids, lengths = _done_frames(store, lang, layer)
    frames = np.concatenate(own)
    magnitude = np.abs(frames).mean(0)
    norm = (frames**2).sum(0) / (frames**2).sum()
    pooled, matched, pooled_cos, matched_cos, pairs = np.zeros(len(norm)), np.zeros(len(norm)), 0.0, 0.0, 0
    for other in LANGS:
        if other == lang:
            continue
        theirs, their_ids, _ = _done_frames(store, other, layer)
        for u, uid in zip(own, own_ids, strict=True):
            for v, vid in zip(theirs, their_ids, strict=True):
                if uid != vid:
                    continue
                p, q = _unit(u.mean(0)), _unit(v.mean(0))
                pooled += p * q
                pooled_cos += p @ q
                uu, vv = _unit(u), _unit(v)
                best = vv[np.argmax(uu @ vv.T, axis=1)]
                matched += (uu * best).mean(0)
                matched_cos += (uu * best).sum(1).mean()
                pairs += 1
    i, j = measure.frame_pairs_of(lengths, frame_pairs, seed, lang)
    cosines = (_unit(frames[i]) * _unit(frames[j])).sum(1)
    spectrum = scipy.linalg.eigvalsh(np.cov(frames.T, bias=True))
    return {
        "magnitude": magnitude, "norm": norm, "pooled": pooled / pooled_cos, "matched": matched / matched_cos,
        "pairs": pairs, "translation_cosine": pooled_cos / pairs, "translation_seqsim": matched_cos / pairs,
        "anisotropy": cosines.mean(), "anisotropy_pairs": len(i),
        "effective_rank": float(np.exp(scipy.stats.entropy(np.clip(spectrum, 0, None)))),
    }  # fmt: skip


@pytest.fixture(scope="module")
def job(planted, run_job, tmp_path_factory) -> pathlib.Path:
    """The job through its command line, --k 4 and the default sample (every shared id is drawn)."""
    out = tmp_path_factory.mktemp("outliers-job") / "out"
    proc = run_job("outliers", "--store", str(planted), "--out", str(out), "--k", "4", "--frame_pairs", "500")
    assert "translations: 6 of 6 shared ids drawn" in proc.stdout, proc.stdout
    assert "skipped 1 (not_encoded): en/s9" in proc.stdout, proc.stdout
    return out


def test_the_planted_dimension_is_found_and_its_shares_equal_numpy(planted, job):
    store = open_store(str(planted))
    rows = _read(job / "outliers.csv")
    assert tuple(rows[0]) == OUTLIER_COLUMNS and len(rows) == len(LANGS) * len(LAYERS)
    dims = _read(job / "dimensions.csv")
    assert tuple(dims[0]) == DIMENSION_COLUMNS
    for row in rows:
        layer, lang = int(row["layer"]), row["lang"]
        want = twin(store, lang, layer, 500, 0)
        top = int(np.argmax(want["magnitude"]))
        assert int(row["top_dimension"]) == top and float(row["k"]) == 4.0
        assert int(row["translation_pairs"]) == want["pairs"] == {"de": 13, "en": 14, "es": 13}[lang]
        assert int(row["frames"]) == sum(n for i, _, n in _rows(lang) if i != "s9")
        for column, value in (("top_norm_share", want["norm"][top]), ("top_cosine_share", want["pooled"][top]),
                              ("top_seqsim_share", want["matched"][top]),
                              ("translation_cosine", want["translation_cosine"]),
                              ("translation_seqsim", want["translation_seqsim"]), ("anisotropy", want["anisotropy"]),
                              ("effective_rank", want["effective_rank"]),
                              ("median_magnitude", np.median(want["magnitude"]))):  # fmt: skip
            assert float(row[column]) == pytest.approx(value, rel=1e-7, abs=1e-12), (layer, lang, column)
        assert int(row["anisotropy_pairs"]) == want["anisotropy_pairs"] == 500
        flagged = np.flatnonzero(want["magnitude"] > 4.0 * np.median(want["magnitude"]))
        assert int(row["outliers"]) == len(flagged)
        assert float(row["outlier_norm_share"]) == pytest.approx(want["norm"][flagged].sum(), rel=1e-7, abs=1e-12)
        assert float(row["outlier_seqsim_share"]) == pytest.approx(want["matched"][flagged].sum(), rel=1e-7,
                                                                   abs=1e-12)  # fmt: skip
        listed = [r for r in dims if (int(r["layer"]), r["lang"]) == (layer, lang)]
        assert [int(r["dimension"]) for r in listed] == sorted(flagged, key=lambda i: -want["magnitude"][i])
        for r in listed:
            dim = int(r["dimension"])
            assert float(r["norm_share"]) == pytest.approx(want["norm"][dim], rel=1e-7)
            assert float(r["cosine_share"]) == pytest.approx(want["pooled"][dim], rel=1e-7)
            assert float(r["seqsim_share"]) == pytest.approx(want["matched"][dim], rel=1e-7)
        if layer == 3:  # the planted dimension, alone, carries most of the norm and of every cosine
            assert [int(r["dimension"]) for r in listed] == [BIG] and float(row["top_norm_share"]) > 0.5
            assert float(row["top_seqsim_share"]) > 0.5 and float(row["anisotropy"]) > 0.5
        else:
            assert int(row["outliers"]) == 0 and float(row["outlier_seqsim_share"]) == 0.0
    layer0 = [r for r in rows if r["layer"] == "0"]
    assert all(abs(float(r["anisotropy"])) < 0.1 for r in layer0)  # noise: no common direction
    assert (job / "figures" / "outliers.png").read_bytes().startswith(b"\x89PNG")
    assert (job / "manifest.json").exists() and (job / "parts" / "layer-3.npz").exists()


def test_without_translations_the_shares_are_na_never_0(planted, tmp_path):
    out = tmp_path / "de"
    summary = outliers_run.run_outliers(configure(OutliersConfig, store=str(planted), out=str(out), langs=("de",),
                                                  progress=False))  # fmt: skip
    assert "no id is shared by two languages: the cosine shares are NA" in summary.report()
    for row in _read(out / "outliers.csv"):
        assert row["translation_pairs"] == "0"
        for column in ("translation_cosine", "top_cosine_share", "outlier_cosine_share", "translation_seqsim",
                       "top_seqsim_share", "outlier_seqsim_share"):  # fmt: skip
            assert row[column] == "NA", (row["layer"], column)
    assert all(r["cosine_share"] == "NA" for r in _read(out / "dimensions.csv"))


def test_resume_reads_parts_back_and_refuses_other_settings(planted, job, tmp_path, monkeypatch):
    """A rerun into the job's folder measures nothing and writes the same tables; one with another --k (or sample)
    is refused before any layer is measured, naming the setting."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(job, out)
    before = (out / "outliers.csv").read_bytes()

    def refused(*args, **kwargs):
        raise AssertionError("a layer was measured")

    monkeypatch.setattr(outliers_run, "measure_layer", refused)

    def config(**settings):
        return configure(OutliersConfig, store=str(planted), out=str(out), progress=False,
                         **{"k": 4.0, "frame_pairs": 500, **settings})  # fmt: skip

    summary = outliers_run.run_outliers(config(block=3))  # the read size is not a setting of the output
    assert summary.measured == 0 and (out / "outliers.csv").read_bytes() == before
    with pytest.raises(OutliersError, match=r"other settings: k: store has 4\.0, this run 6\.0"):
        outliers_run.run_outliers(config(k=6.0))
    with pytest.raises(OutliersError, match=r"other settings: translations: store has 32, this run 2"):
        outliers_run.run_outliers(config(translations=2))
    (out / "parts" / "layer-2.npz").unlink()
    (out / "parts" / "layer-2.npz.sha256").unlink()
    monkeypatch.setattr(outliers_run, "measure_layer", measure.measure_layer)
    assert outliers_run.run_outliers(config()).measured == 1 and (out / "outliers.csv").read_bytes() == before
    # Encoding went on in the store: a rerun measured the missing layers, then refused the old ones (a probe's). The
    # folder records the utterances done, and the rerun is refused before any layer is measured.
    (out / "parts" / "layer-2.npz").unlink()
    monkeypatch.setattr(outliers_run, "measure_layer", refused)
    inputs = outliers_run.store_inputs

    def grown(reader, langs):
        found = inputs(reader, langs)
        return {**found, "utterances_done": {**found["utterances_done"], "en": found["utterances_done"]["en"] + 1}}

    monkeypatch.setattr(outliers_run, "store_inputs", grown)
    with pytest.raises(OutliersError, match=r"other inputs than this run's: utterances_done\.en: store has 7, this"):
        outliers_run.run_outliers(config())


def test_refusals_before_anything_is_written(planted, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(OutliersError, match=r"the store has no layer \[5\]; it has \[0, 2, 3\]"):
        outliers_run.run_outliers(configure(OutliersConfig, store=str(planted), out=str(out), layers=(5,)))
    with pytest.raises(OutliersError, match=r"the store has no language \['fr'\]"):
        outliers_run.run_outliers(configure(OutliersConfig, store=str(planted), out=str(out), langs=("fr",)))
    from engine.stores.layers import LayerStore

    empty = tmp_path / "empty"  # as `encode --allow_empty` leaves it: an IndexError deep in the measuring
    LayerStore.create_or_open(str(empty), LayerStore.open(str(planted)).info)
    with pytest.raises(OutliersError, match=r"holds no language: nothing to measure"):
        outliers_run.run_outliers(configure(OutliersConfig, store=str(empty), out=str(out)))
    assert not out.exists()


def test_plan_reads_no_states_and_writes_nothing(planted, run_job, tmp_path):
    out = tmp_path / "planned"
    proc = run_job("outliers", "--store", str(planted), "--out", str(out), "--plan")
    assert "plan: outliers" in proc.stdout
    assert "translation pairs per layer: 20 (6 of 6 shared ids drawn)" in proc.stdout, proc.stdout
    for stage in ("read states", "sums, scatter", "spectra", "translations"):
        assert stage in proc.stdout
    assert not out.exists()


def test_verify_knows_every_file_of_the_folder(job):
    """Each file the job writes is one verify judges as babelgrid's (``ownership.OUTPUT_NAMES``) and finds clean."""
    from engine.pipelines.verify.config import VerifyConfig
    from engine.pipelines.verify.run import run_verify

    report = run_verify(configure(VerifyConfig, location=str(job), progress=False))
    assert report.exit_code == 0 and "not ours" not in " ".join(report.notes), report.report()


def test_anisotropy_pairs_come_from_two_utterances_or_none():
    """A language of one utterance drew its anisotropy pairs within that utterance (a probe's), a value of another
    kind beside the other languages': no pairs (NA) now."""
    i, j = measure.frame_pairs_of(np.array([40]), 50, 0, "en")
    assert len(i) == len(j) == 0
    lengths = np.array([0, 30, 20])
    owner = np.repeat(np.arange(3), lengths)
    i, j = measure.frame_pairs_of(lengths, 50, 0, "en")
    assert len(i) == 50 and (owner[i] != owner[j]).all()
