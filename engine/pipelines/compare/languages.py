"""The languages a comparison shares, matched across language-code systems.

Stores of the same audio may name a language in different systems (``engine.languages``): a Whisper store of FLEURS
names French ``fr_fr`` (or ``fr``), an Omnilingual ASR store ``fra_Latn``. A language of the comparison is one
``engine.languages.language_key`` with each store's own code for it, one code per store; the outputs name it by the
first store's code. Every read of a store (its lengths, utterance tables, states, retrieval folder) goes through that
store's code.

Matching, per key that every store has codes for:

- a code that every store holds literally is a language of its own (two stores of one system compare as they always
  did, even where one key has several codes: ``pt_br`` and ``pt_pt``);
- the codes left over match when each store has exactly one for the key; when each has some and one store has two or
  more, the match is ambiguous, and refused, naming them.

``--langs`` names a language by any store's code (or any code of the same key): each store's code is the asked code
itself when the store holds it, else its only code of that key; two codes of one store for the key are refused,
naming both.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from engine.languages import language_key
from engine.pipelines.compare.config import CompareError


@dataclasses.dataclass(frozen=True)
class Language:
    """One language of the comparison: ``codes[k]`` is store k's code for it; ``name`` (the first store's code)
    names it in every output."""

    key: str
    codes: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.codes[0]


def _by_key(codes: Sequence[str]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for code in sorted(codes):
        groups.setdefault(language_key(code), []).append(code)
    return groups


def _ambiguous(url: str, key: str, codes: Sequence[str]) -> CompareError:
    return CompareError(
        f"store {url!r} has {len(codes)} codes for language {key!r}: {' and '.join(map(repr, codes))}; which one "
        "matches the other stores' is ambiguous: name the one to compare in --langs, as the store spells it"
    )


def shared_languages(urls: Sequence[str], listed: Sequence[Sequence[str]]) -> list[Language]:
    """Every language all stores hold (``listed[k]``: store k's codes), sorted by name; a CompareError for an
    ambiguous match (module docstring)."""
    groups = [_by_key(codes) for codes in listed]
    languages = []
    for key in sorted(set.intersection(*(set(g) for g in groups))):
        literal = set.intersection(*(set(g[key]) for g in groups))
        languages += [Language(key, (code,) * len(listed)) for code in sorted(literal)]
        left = [[c for c in g[key] if c not in literal] for g in groups]
        if not all(left):
            continue  # a store has no other code of this key: nothing left to match
        for url, codes in zip(urls, left, strict=True):
            if len(codes) > 1:
                raise _ambiguous(url, key, codes)
        languages.append(Language(key, tuple(codes[0] for codes in left)))
    return sorted(languages, key=lambda lang: lang.name)


def asked_languages(urls: Sequence[str], listed: Sequence[Sequence[str]], asked: Sequence[str]) -> list[Language]:
    """The languages named by ``asked`` (any store's code, or any code of the same language), sorted by name, each
    once; a CompareError naming the codes no store set holds, or a store's two codes for one asked language."""
    languages: dict[str, Language] = {}
    missing = []
    for code in asked:
        key = language_key(code)
        codes = []
        for url, held in zip(urls, listed, strict=True):
            if code in held:
                codes.append(code)
                continue
            matches = sorted(c for c in held if language_key(c) == key)
            if len(matches) > 1:
                raise _ambiguous(url, key, matches)
            codes.append(matches[0] if matches else None)
        if None in codes:
            missing.append(code)
        else:
            languages.setdefault(tuple(codes), Language(key, tuple(codes)))
    for k in range(len(urls)):  # one store's code for two asked languages: the other store's two are ambiguous
        seen: dict[str, Language] = {}
        for lang in languages.values():
            other = seen.setdefault(lang.codes[k], lang)
            if other is not lang:
                j = next(j for j in range(len(urls)) if other.codes[j] != lang.codes[j])
                raise _ambiguous(urls[j], lang.key, sorted({other.codes[j], lang.codes[j]}))
    if missing:
        try:
            shared = [lang.name for lang in shared_languages(urls, listed)]
        except CompareError:
            shared = sorted(set.intersection(*(set(held) for held in listed)))
        raise CompareError(f"languages {sorted(missing)} are not in every store; the stores share {shared}")
    return sorted(languages.values(), key=lambda lang: lang.name)


def languages_of(config, readers) -> list[Language]:
    """The languages a CompareConfig compares: its ``langs``, or every one its stores share."""
    urls, listed = [r.url for r in readers], [list(r.languages()) for r in readers]
    if config.langs is None:
        return shared_languages(urls, listed)
    return asked_languages(urls, listed, config.langs)
