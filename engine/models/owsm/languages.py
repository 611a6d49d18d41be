"""A store's language codes as OWSM's language tokens (ISO 639-3: ``en`` -> ``<eng>``, ``de`` -> ``<deu>``).

Store codes are what the datasets give: ISO 639-1 (``en``), FLEURS configurations (``en_us``, ``cmn_hans_cn``) or
already three letters (``ast``, ``ceb``). The part before the first ``_`` is looked up in ``ISO639_3``, the
terminology codes OWSM's token list uses; a macrolanguage tries its individual language next where OWSM may list that
one instead (``fa``: ``fas`` then ``pes``). The first candidate the model's token list holds wins; none is an error
that names the language and the fix (``--decode_as lang=xxx``).
"""

from __future__ import annotations

import types
from collections.abc import Sequence

from engine.errors import LanguageError

# ISO 639-1 -> ISO 639-3 candidates, in order (the macrolanguage first, then its main individual language).
ISO639_3 = types.MappingProxyType(
    {k: tuple(v.split()) for k, v in {
        "af": "afr", "am": "amh", "ar": "ara arb", "as": "asm", "az": "aze azj", "ba": "bak", "be": "bel",
        "bg": "bul", "bn": "ben", "bo": "bod", "br": "bre", "bs": "bos", "ca": "cat", "cs": "ces", "cy": "cym",
        "da": "dan", "de": "deu", "el": "ell", "en": "eng", "eo": "epo", "es": "spa", "et": "est ekk", "eu": "eus",
        "fa": "fas pes", "ff": "ful", "fi": "fin", "fo": "fao", "fr": "fra", "ga": "gle", "gl": "glg", "gu": "guj",
        "ha": "hau", "haw": "haw", "he": "heb", "hi": "hin", "hr": "hrv", "ht": "hat", "hu": "hun", "hy": "hye",
        "id": "ind", "ig": "ibo", "is": "isl", "it": "ita", "ja": "jpn", "jv": "jav", "jw": "jav", "ka": "kat",
        "kk": "kaz", "km": "khm", "kn": "kan", "ko": "kor", "ky": "kir", "la": "lat", "lb": "ltz", "lg": "lug",
        "ln": "lin", "lo": "lao", "lt": "lit", "lv": "lav lvs", "mg": "mlg", "mi": "mri", "mk": "mkd", "ml": "mal",
        "mn": "mon khk", "mr": "mar", "ms": "msa zsm", "mt": "mlt", "my": "mya", "nb": "nob nor", "ne": "nep npi",
        "nl": "nld", "nn": "nno", "no": "nor nob", "ny": "nya", "oc": "oci", "om": "orm", "or": "ori ory",
        "pa": "pan", "pl": "pol", "ps": "pus pbt", "pt": "por", "ro": "ron", "ru": "rus", "sa": "san", "sd": "snd",
        "si": "sin", "sk": "slk", "sl": "slv", "sn": "sna", "so": "som", "sq": "sqi", "sr": "srp", "su": "sun",
        "sv": "swe", "sw": "swa swh", "ta": "tam", "te": "tel", "tg": "tgk", "th": "tha", "tk": "tuk", "tl": "tgl",
        "tr": "tur", "tt": "tat", "uk": "ukr", "ur": "urd", "uz": "uzb uzn", "vi": "vie", "wo": "wol", "xh": "xho",
        "yi": "yid", "yo": "yor", "zh": "zho cmn", "zu": "zul",
        # FLEURS parts that are three letters already, with OWSM's other spellings
        "cmn": "cmn zho", "yue": "yue", "fil": "fil tgl", "ckb": "ckb", "ast": "ast", "ceb": "ceb", "kam": "kam",
        "kea": "kea", "luo": "luo", "nso": "nso", "umb": "umb",
    }.items()}
)  # fmt: skip


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
