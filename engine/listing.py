"""``Listing``: what a data-like attribute of a reader holds (``store.languages``, ``sim.measures``).

The analyst's convention (docs/analysis.md): what a store holds is an attribute (``store.info``, ``store.languages``,
``sim.layers``, ``sim.measures``); what takes an argument or does work is a method (``store.lengths(lang)``,
``sim.matrix(...)``). ``store.languages()`` and ``sim.measures()``, the form before they were attributes, still
return a copy of the list, so that code written for it runs on.
"""

from __future__ import annotations


class Listing(list):
    """A list of names; calling it returns a copy (the older method form)."""

    def __call__(self) -> list:
        return list(self)


def chosen(what: str, asked, available, error: type[Exception], where: str = "the store") -> list:
    """The items of ``available`` that ``asked`` names (every one for None), in ``available``'s order; one it lacks
    is an ``error`` naming what ``where`` has (a job's --langs, --layers or --measure against its input)."""
    available = list(available)
    known = set(available)
    unknown = [a for a in (asked or ()) if a not in known]
    if unknown:
        raise error(f"{where} has no {what} {shown(unknown)}; it has {shown(available)}")
    return [a for a in available if asked is None or a in asked]


def shown(items, limit: int = 12) -> str:
    """``items`` as a list in an error message, its first ``limit`` only: a message stays one short line whatever a
    user asked for (``--layers 1-3000000`` printed 26 MB)."""
    items = list(items)
    if len(items) <= limit:
        return repr(items)
    return repr(items[:limit])[:-1] + f", ... ({len(items) - limit} more)]"
