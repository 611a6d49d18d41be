"""Which language pairs a run covers: the ``--pairs`` spec of the all-pairs jobs (seqsim, interp, challenge).

Named languages are checked against the store's, and every name against the similarity store's folder rule, so that
a pair named here can always be written there.
"""

from __future__ import annotations

from engine.stores.similarity import SimilarityError, check_name

PAIR_MODES = ("unordered", "ordered")  # resolve_pairs' named specs; else a list of a:b


def resolve_pairs(spec: str, langs, available=None) -> list[tuple[str, str]]:
    """Language pairs (a, b), a != b, from ``spec``:

    - ``unordered``: every {a, b} once, as (a, b) with a < b;
    - ``ordered``: (a, b) and (b, a);
    - a comma list of ``a:b`` items, where either side may be ``*`` (every other language of ``langs``):
      ``en:*``, ``en:de,es:fr``.

    ``langs`` are the languages the run covers; named languages must be in ``available`` (default ``langs``), the
    store's languages: the error names the one it lacks and what it has.
    """
    langs = sorted(langs)
    available = set(langs if available is None else available)
    spec = spec.strip()
    if spec == "unordered":
        return [(a, b) for i, a in enumerate(langs) for b in langs[i + 1 :]]
    if spec == "ordered":
        return [(a, b) for a in langs for b in langs if a != b]
    pairs: list[tuple[str, str]] = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        if item.count(":") != 1:
            raise SimilarityError(
                f"pairs item {item!r} is not 'a:b': give {' or '.join(PAIR_MODES)}, or a list like en:de,es:* "
                "('*' = every other language)"
            )
        left, right = (s.strip() for s in item.split(":"))
        for side in (left, right):
            if side != "*":
                check_name("language", side)
                if side not in available:  # what is missing first: the store lacks it, --pairs only names it
                    raise SimilarityError(
                        f"{side!r} is not in the store (it has {', '.join(sorted(available))}): pairs item {item!r} "
                        "names it; pair languages the store has, or '*' for every other one"
                    )
        for a in langs if left == "*" else [left]:
            for b in langs if right == "*" else [right]:
                if a != b:
                    pairs.append((a, b))
                elif left != "*" and right != "*":
                    raise SimilarityError(f"pairs item {item!r} pairs a language with itself; name two languages")
    if not pairs:
        raise SimilarityError(f"pairs {spec!r} gives no pair of two different languages among {langs}")
    return list(dict.fromkeys(pairs))
