"""URIEL's distances between languages (Littell et al. 2017), from the data ``lang2vec`` ships.

URIEL defines six distances; lang2vec's GitHub releases from 1.1.6 carry them precomputed (``lang2vec.distance``),
but PyPI's newest lang2vec is 1.1.2, which ships URIEL's feature vectors only. Where the installed lang2vec has
``distance`` it is used as it is. Otherwise each is computed from lang2vec's features as URIEL defines it:

- ``syntactic``, ``phonological``, ``inventory``: cosine distance of the k-NN-completed WALS/SSWL/Ethnologue/PHOIBLE
  vectors (``syntax_knn``, ``phonology_knn``, ``inventory_knn``);
- ``featural``: cosine distance of those three and ``fam`` and ``geo`` concatenated;
- ``geographic``: great-circle distance over half the Earth's circumference (0 = same place, 1 = antipodes).
  lang2vec's ``geo`` features are exactly that distance from the language to 299 fixed points (``GC_<lat>_<lon>``),
  so the language's place is found as the point whose distances to them fit best (grid, then least squares); a fit
  whose residual exceeds ``GEO_RESIDUAL`` is an error, not a guess;
- ``genetic``: from ``fam``, the Glottolog family nodes above the language: ``1 - shared / max(len_a, len_b)``, 1
  across families. (URIEL's table is derived from the same tree; this is babelgrid's rule, stated in
  docs/typology.md.)

Store codes map to URIEL's ISO 639-3 through ``engine.languages.iso639_3`` (``en_us`` -> ``eng``; a macrolanguage
tries its individual language next). A language URIEL lacks is returned in ``missing`` with the reason, never
imputed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import warnings
from collections.abc import Sequence

import numpy as np

from engine.errors import BabelgridError
from engine.languages import iso639_3
from engine.pipelines.typology.config import DISTANCES

_COSINE_SETS = {"syntactic": ("syntax_knn",), "phonological": ("phonology_knn",), "inventory": ("inventory_knn",)}
_COSINE_SETS["featural"] = ("syntax_knn", "phonology_knn", "inventory_knn", "fam", "geo")
GEO_RESIDUAL = 0.01  # RMS misfit of a located language, in half-circumferences (about 200 km)


class UrielError(BabelgridError, ValueError):
    pass


@dataclasses.dataclass(frozen=True)
class Uriel:
    languages: tuple[str, ...]  # store codes URIEL has, in the order asked
    codes: tuple[str, ...]  # their URIEL (ISO 639-3) codes
    missing: dict[str, str]  # store code -> why it is left out
    matrices: dict[str, np.ndarray]  # distance kind -> f64[n, n], zero diagonal
    source: str  # "lang2vec <version> tables" or "lang2vec <version> features"


def _read_archives_once(load):
    """``numpy.load`` that reads every array of an ``.npz`` archive once and returns them in a dict.

    lang2vec indexes the lazy ``NpzFile`` that ``numpy.load`` returns inside its loops, and each index reads and
    inflates that member of the zip again: its feature names once per feature (3,718 times for ``fam``), its language
    codes once per language at import. That was 3.9 s of CPU to import it and 5.8 s to look up ``fam`` for five
    languages (2026-11-29, Intel Xeon); with the arrays read once, 0.5 s and 0.3 s. The arrays are the same."""

    def read(file, *args, **kwargs):
        found = load(file, *args, **kwargs)
        if isinstance(found, np.lib.npyio.NpzFile):
            with found:
                return {name: found[name] for name in found.files}
        return found

    return read


class _NumpyReadingArchivesOnce:
    """What lang2vec's module sees as ``np``: numpy, with ``load`` reading an archive's arrays once."""

    def __init__(self):
        self.load = _read_archives_once(np.load)

    def __getattr__(self, name):
        return getattr(np, name)


@functools.cache
def _lang2vec():
    try:
        # It prints notes on import and lookup, and imports pkg_resources (a deprecation warning per run). Its import
        # reads its archives too: numpy.load reads them once for the import's length (one import, under the cache).
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            load, np.load = np.load, _read_archives_once(np.load)
            try:
                import lang2vec.lang2vec as l2v
            finally:
                np.load = load
    except ImportError as e:
        raise UrielError(
            "the typology job needs lang2vec (URIEL's data): pip install 'babelgrid[typology]' "
            f"(lang2vec imports pkg_resources: setuptools < 81): {e}"
        ) from None
    l2v.np = _NumpyReadingArchivesOnce()
    return l2v


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lang2vec")
    except PackageNotFoundError:
        return "unknown"


def resolve(languages: Sequence[str]) -> tuple[list[str], list[str], dict[str, str]]:
    """(store codes kept, their URIEL codes, store code -> reason left out)."""
    known = _lang2vec().URIEL_LANGUAGES
    kept, codes, missing, seen = [], [], {}, {}
    for lang in languages:
        candidates = iso639_3(lang)
        code = next((c for c in candidates if c in known), None)
        if code is None:
            tried = ", ".join(candidates) or "no ISO 639-3 code known for it"
            missing[lang] = f"not in URIEL (tried {tried})"
        elif code in seen:
            missing[lang] = f"the same URIEL language ({code}) as {seen[code]}"
        else:
            seen[code] = lang
            kept.append(lang)
            codes.append(code)
    return kept, codes, missing


def _features(codes: Sequence[str], feature_set: str) -> np.ndarray:
    return _features_of(tuple(codes), feature_set)


@functools.lru_cache(maxsize=16)
def _features_of(codes: tuple[str, ...], feature_set: str) -> np.ndarray:
    """lang2vec's lookup (a few seconds for ``fam``), once per run and set: featural reads fam and geo again."""
    with contextlib.redirect_stdout(io.StringIO()):
        found = _lang2vec().get_features(list(codes), feature_set)
    rows = []
    for code in codes:
        row = found[code]
        if any(isinstance(v, str) for v in row):  # '--': not in this set
            raise UrielError(f"URIEL has no {feature_set!r} features for {code!r}")
        rows.append(np.asarray(row, np.float64))
    return np.stack(rows)


def cosine_distances(vectors: np.ndarray) -> np.ndarray:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    out = 1.0 - np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(out, 0.0)
    return out


def _family_distances(fam: np.ndarray) -> np.ndarray:
    nodes = fam > 0.5
    sizes = nodes.sum(axis=1)
    shared = nodes.astype(np.float64) @ nodes.T.astype(np.float64)
    longest = np.maximum(sizes[:, None], sizes[None, :])
    out = 1.0 - np.divide(shared, longest, out=np.zeros_like(shared), where=longest > 0)
    np.fill_diagonal(out, 0.0)
    return out


def _unit(lat, lon) -> np.ndarray:
    lat, lon = np.radians(lat), np.radians(lon)
    return np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle angle between unit vectors, over pi."""
    return np.arccos(np.clip(a @ b.T, -1.0, 1.0)) / np.pi


def _grid(anchors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every 2 degrees of latitude and longitude ([g, 2]) and its distances to the anchors (f32[g, k])."""
    lat, lon = np.meshgrid(np.arange(-90.0, 90.5, 2.0), np.arange(-180.0, 180.0, 2.0), indexing="ij")
    units = _unit(lat.ravel(), lon.ravel())
    angles = _angles(units, _unit(anchors[:, 0], anchors[:, 1])).astype(np.float32)
    return np.stack([lat.ravel(), lon.ravel()], axis=1), angles


def locate(distances: np.ndarray, anchors: np.ndarray, grid=None) -> tuple[np.ndarray, float]:
    """(lat, lon) in degrees whose great-circle distances (over pi) to ``anchors`` ([k, 2] degrees) best fit
    ``distances`` ([k]), and the RMS misfit: a 2 degree grid (``grid``: ``_grid(anchors)``, shared by the
    languages of a run), then least squares from its best point."""
    import scipy.optimize

    points, grid_angles = _grid(anchors) if grid is None else grid
    anchor_units = _unit(anchors[:, 0], anchors[:, 1])
    misfit = ((grid_angles - distances[None].astype(np.float32)) ** 2).mean(axis=1)
    start = points[int(np.argmin(misfit))]

    def residual(p):
        return _angles(_unit(p[0], p[1])[None], anchor_units)[0] - distances

    fit = scipy.optimize.least_squares(residual, start, bounds=([-90, -540], [90, 540]))
    return fit.x, float(np.sqrt(np.mean(fit.fun**2)))


def _geo_distances(codes: Sequence[str]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        found = _lang2vec().get_features(list(codes[:1]), "geo", header=True)
    anchors = np.array([[float(x) for x in str(name)[3:].split("_")] for name in found["CODE"]])
    places, grid = [], _grid(anchors)
    for code, row in zip(codes, _features(codes, "geo"), strict=True):
        place, misfit = locate(row, anchors, grid)
        if misfit > GEO_RESIDUAL:
            raise UrielError(f"URIEL's geo features of {code!r} fit no place on Earth (misfit {misfit:.3f})")
        places.append(place)
    places = np.array(places)
    units = _unit(places[:, 0], places[:, 1])
    out = _angles(units, units)
    np.fill_diagonal(out, 0.0)
    return out


def _computed(kind: str, codes: Sequence[str]) -> np.ndarray:
    if kind == "genetic":
        return _family_distances(_features(codes, "fam"))
    if kind == "geographic":
        return _geo_distances(codes)
    return cosine_distances(np.concatenate([_features(codes, s) for s in _COSINE_SETS[kind]], axis=1))


def uriel_distances(languages: Sequence[str], kinds: Sequence[str] = DISTANCES) -> Uriel:
    """URIEL's distances of ``kinds`` between the ``languages`` (store codes) it has (module docstring)."""
    unknown = [k for k in kinds if k not in DISTANCES]
    if unknown:
        raise UrielError(f"unknown URIEL distance {unknown}; choose among {', '.join(DISTANCES)}")
    kept, codes, missing = resolve(languages)
    l2v = _lang2vec()
    tables = hasattr(l2v, "distance")
    matrices = {}
    if len(kept) >= 2:
        for kind in kinds:
            if tables:
                with contextlib.redirect_stdout(io.StringIO()):
                    matrices[kind] = np.asarray(l2v.distance(kind, list(codes)), np.float64)
            else:
                matrices[kind] = _computed(kind, codes)
    source = f"lang2vec {_version()} {'tables' if tables else 'features'}"
    return Uriel(tuple(kept), tuple(codes), missing, matrices, source)
