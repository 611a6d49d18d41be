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
