"""What every decode path (Whisper's decoder, OWSM's decoder, a CTC head) does the same way: the languages and
layers a run decodes, checked once against the store and the model given (``check_store``); the (layer, ln_post)
variants of those layers; and the claimed-unit walk that lets several ``jax.distributed`` processes share a run
(``decode_claimed``: units claimed through the output store's claim keys, ``engine.runtime.claims``, parts kept from
an earlier run counted once, the merged files written by process 0 once every unit is done)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from engine.pipelines.decode import hypotheses as hyp
from engine.pipelines.decode.config import DecodeConfig, DecodeError
from engine.runtime.parallel import is_process_zero
from engine.runtime.runs import open_claimed_run, progress_bar, work_claims
from engine.runtime.units import UnitLoop
from engine.stores.kv import open_kvstore
from engine.stores.parts import read_part
from engine.stores.provenance import not_the_stores_model
from engine.stores.schema import is_done


def layer_variants(layers, ln_post: str, top: int) -> list[tuple[int, bool]]:
    """(layer, ln_post) pairs: layer L+1 is ln_post's output already, so it is decoded once, marked on."""
    wanted = {"on": (True,), "off": (False,), "both": (True, False)}[ln_post]
    out = []
    for layer in layers:
        out += [(layer, True)] if layer == top else [(layer, ln) for ln in wanted]
    return out


def check_store(config: DecodeConfig, reader, name: str, sha256: str, same: bool = True) -> tuple[list[str], list[int]]:
    """``(languages, layers)`` the run decodes: ``config.langs`` and ``config.layers`` (default: all the store has),
    refused with a DecodeError naming the fix when the store lacks one, or when the model given (``name``,
    ``sha256``; ``same``: a further check of the caller's, such as Whisper's dimensions) is not the store's."""
    info = reader.info
    if info.checkpoint_sha256 != sha256 or not same:
        raise DecodeError(not_the_stores_model(info, name, sha256, config.model))
    langs = list(config.langs) if config.langs else reader.languages()
    missing = sorted(set(langs) - set(reader.languages()))
    if missing:
        raise DecodeError(f"languages {missing} are not in the layer store, which has {reader.languages()}")
    layers = list(config.layers) if config.layers is not None else list(info.layers)
    lacking = [la for la in layers if la not in info.layers]
    if lacking:
        raise DecodeError(
            f"layers {lacking} are not in the layer store, which holds {list(info.layers)}; pass --layers from those "
            "(or encode the store with them)"
        )
    return langs, layers


@dataclasses.dataclass(frozen=True)
class Units:
    """A decode run's work: ``units[name] = (language, ...)`` (the claim key's name -> what the path decodes), and
    ``parts(name) -> {part: key}`` the hypothesis parts (``engine.pipelines.decode.hypotheses``) each unit writes."""

    units: dict[str, tuple]
    parts: Callable[[str], dict]


def decode_claimed(config: DecodeConfig, reader, lease, summary, manifest: dict, units: Units, work, finish,
                   label: str = "decode", **compare) -> dict[str, list[int]]:  # fmt: skip
    """Opens the run's manifest (``manifest``; ``compare``: ``create_or_compare``'s ``fields`` and ``check``), then
    claims units until none is left: ``work(kv, unit, pending, done)`` writes the parts ``pending`` (``{part: key}``,
    those not kept from an earlier run) of a unit from the utterances ``done`` (indices done in the store for its
    language); process 0 then calls ``finish(kv)`` (the merged files). A part is kept when made from the utterances
    done now.
    Returns ``{language: done}``."""
    _, kv = open_kvstore(config.run.out)
    claims = work_claims(config.run, "decode", kv)
    open_claimed_run(
        "babelgrid-decode-manifest", claims, lease, kv, hyp.MANIFEST, manifest, config.run.out, error=DecodeError,
        what="decode folder", **compare,
    )  # fmt: skip
    langs = dict.fromkeys(unit[0] for unit in units.units.values())
    # A snapshot of the utterances done in the store: what each part is made from, and what a kept part must list.
    done = {lang: np.flatnonzero(is_done(reader.lengths(lang))).tolist() for lang in langs}

    def kept(key: str, lang: str) -> bool:
        old = read_part(kv, key, config.run.out, "decode")
        return old is not None and old[1]["done"] == done[lang]

    def unit_done(unit: str) -> bool:
        return all(kept(key, units.units[unit][0]) for key in units.parts(unit).values())

    bar = progress_bar(sum(len(units.parts(u)) for u in units.units), label, "part", config.run.progress)
    pending = {}  # unit -> {part: key} of the parts not kept from an earlier run
    for unit, (lang, *_) in units.units.items():
        parts = units.parts(unit)
        pending[unit] = {part: key for part, key in parts.items() if not kept(key, lang)}
        if is_process_zero():  # every process sees the parts kept from an earlier run; one counts them
            summary.parts_kept += len(parts) - len(pending[unit])
            bar.update(len(parts) - len(pending[unit]))
    with UnitLoop(claims, lease, summary, bar) as loop:
        todo, weight = [u for u in units.units if pending[u]], lambda unit: len(pending[unit])
        what = summary.unit if summary.unit == "languages" else f"{summary.unit} units"
        for claimed in loop.rounds(todo, unit_done, total=len(units.units), weight=weight, what=what):
            for claim in claimed:
                work(kv, claim.unit, pending[claim.unit], done[units.units[claim.unit][0]])
                loop.done(claim, progress=len(pending[claim.unit]))
    if is_process_zero():  # every unit is done: rounds() ends only when no other process holds one
        finish(kv)
    return done
