"""A store's language codes as OWSM's language tokens (ISO 639-3: ``en`` -> ``<eng>``, ``de`` -> ``<deu>``).

Store codes are what the datasets give: ISO 639-1 (``en``), FLEURS configurations (``en_us``, ``cmn_hans_cn``) or
already three letters (``ast``, ``ceb``). The part before the first ``_`` is looked up in ``ISO639_3``, the
terminology codes OWSM's token list uses; a macrolanguage tries its individual language next where OWSM may list that
one instead (``fa``: ``fas`` then ``pes``). The first candidate the model's token list holds wins; none is an error
that names the language and the fix (``--decode_as lang=xxx``).
"""

from __future__ import annotations

from collections.abc import Sequence

from engine.errors import LanguageError
from engine.languages import ISO639_3


def owsm_language(lang: str, known: Sequence[str]) -> str:
    """The OWSM language token (``<eng>``) of store code ``lang`` among ``known`` (``OwsmConfig.languages()``)."""
    first = lang.strip().lower().replace("-", "_").split("_", 1)[0]
    candidates = ISO639_3.get(first, (first,) if len(first) == 3 else ())
    for code in candidates:
        if f"<{code}>" in known:
            return f"<{code}>"
    tried = ", ".join(f"<{c}>" for c in candidates) or "no ISO 639-3 code known for it"
    raise LanguageError(
        f"language {lang!r} has no token in this OWSM model ({tried}; it lists {len(known)} languages, e.g. "
        f"{', '.join(known[:6])}); leave it out (--langs) or name the token to decode it as: --decode_as {first}=xxx"
    )
