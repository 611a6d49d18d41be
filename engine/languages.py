"""Whisper's languages: OpenAI's language table and order, and the FLEURS and ISO 639-3 codes that map onto it.

``LANGUAGES`` order is token order: the i-th entry is the language token ``sot + 1 + i``
(see ``engine.models.whisper.tokenizer``). A store's language code is whatever its dataset names (a folder, a
manifest's ``lang``, a FLEURS configuration); three systems are understood, and ``fleurs_to_whisper`` maps each to
Whisper's code:

- Whisper's own codes (ISO 639-1 where one exists): ``en``, ``de``, ``haw``;
- FLEURS (google/fleurs) configurations, ``<ISO 639 code>_<region or script>``: ``en_us``, ``cmn_hans_cn``;
- ISO 639-3 with an ISO 15924 script, as FLORES-200, NLLB and Meta's Omnilingual ASR write them: ``eng_Latn``,
  ``deu_Latn``, ``cmn_Hans``, ``arb_Arab`` (the script may be left out: ``eng``).

``language_key`` is the code two stores' languages are matched by when their datasets name languages in different
systems (a FLEURS Whisper store's ``en_us`` and an Omnilingual store's ``eng_Latn`` are both ``en``); ``to_fleurs``
names the FLEURS configuration of a language.

Jobs and stores speak these store codes, and ask only the neutral questions: ``language_key``, ``is_english``,
``text_code`` (the code text tools read a language by), ``iso639_3``, ``to_fleurs``. A model family turns a store code
into its own tokens itself (``Decoder.language``, ``Trainer.language``); ``fleurs_to_whisper`` and
``whisper_code_or_none`` are Whisper's mapping, for the families (``tests/engine/test_language_key_rule.py``).
"""

from __future__ import annotations

import types
from collections.abc import Mapping

from engine.errors import LanguageError

# OpenAI's table and order: the i-th entry is the language token sot + 1 + i.
LANGUAGES: Mapping[str, str] = types.MappingProxyType(
    {
        "en": "english",
        "zh": "chinese",
        "de": "german",
        "es": "spanish",
        "ru": "russian",
        "ko": "korean",
        "fr": "french",
        "ja": "japanese",
        "pt": "portuguese",
        "tr": "turkish",
        "pl": "polish",
        "ca": "catalan",
        "nl": "dutch",
        "ar": "arabic",
        "sv": "swedish",
        "it": "italian",
        "id": "indonesian",
        "hi": "hindi",
        "fi": "finnish",
        "vi": "vietnamese",
        "he": "hebrew",
        "uk": "ukrainian",
        "el": "greek",
        "ms": "malay",
        "cs": "czech",
        "ro": "romanian",
        "da": "danish",
        "hu": "hungarian",
        "ta": "tamil",
        "no": "norwegian",
        "th": "thai",
        "ur": "urdu",
        "hr": "croatian",
        "bg": "bulgarian",
        "lt": "lithuanian",
        "la": "latin",
        "mi": "maori",
        "ml": "malayalam",
        "cy": "welsh",
        "sk": "slovak",
        "te": "telugu",
        "fa": "persian",
        "lv": "latvian",
        "bn": "bengali",
        "sr": "serbian",
        "az": "azerbaijani",
        "sl": "slovenian",
        "kn": "kannada",
        "et": "estonian",
        "mk": "macedonian",
        "br": "breton",
        "eu": "basque",
        "is": "icelandic",
        "hy": "armenian",
        "ne": "nepali",
        "mn": "mongolian",
        "bs": "bosnian",
        "kk": "kazakh",
        "sq": "albanian",
        "sw": "swahili",
        "gl": "galician",
        "mr": "marathi",
        "pa": "punjabi",
        "si": "sinhala",
        "km": "khmer",
        "sn": "shona",
        "yo": "yoruba",
        "so": "somali",
        "af": "afrikaans",
        "oc": "occitan",
        "ka": "georgian",
        "be": "belarusian",
        "tg": "tajik",
        "sd": "sindhi",
        "gu": "gujarati",
        "am": "amharic",
        "yi": "yiddish",
        "lo": "lao",
        "uz": "uzbek",
        "fo": "faroese",
        "ht": "haitian creole",
        "ps": "pashto",
        "tk": "turkmen",
        "nn": "nynorsk",
        "mt": "maltese",
        "sa": "sanskrit",
        "lb": "luxembourgish",
        "my": "myanmar",
        "bo": "tibetan",
        "tl": "tagalog",
        "mg": "malagasy",
        "as": "assamese",
        "tt": "tatar",
        "haw": "hawaiian",
        "ln": "lingala",
        "ha": "hausa",
        "ba": "bashkir",
        "jw": "javanese",
        "su": "sundanese",
        "yue": "cantonese",  # only in 100-language models (large-v3 and later)
    }
)

# Languages written without spaces between words: word timing splits them at character boundaries.
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})

# The 102 FLEURS configurations (google/fleurs), ``<ISO 639 code>_<region or script>``.
FLEURS_LANGUAGES: tuple[str, ...] = tuple(
    """af_za am_et ar_eg as_in ast_es az_az be_by bg_bg bn_in bs_ba ca_es ceb_ph ckb_iq cmn_hans_cn cs_cz cy_gb
    da_dk de_de el_gr en_us es_419 et_ee fa_ir ff_sn fi_fi fil_ph fr_fr ga_ie gl_es gu_in ha_ng he_il hi_in hr_hr
    hu_hu hy_am id_id ig_ng is_is it_it ja_jp jv_id ka_ge kam_ke kea_cv kk_kz km_kh kn_in ko_kr ky_kg lb_lu lg_ug
    ln_cd lo_la lt_lt luo_ke lv_lv mi_nz mk_mk ml_in mn_mn mr_in ms_my mt_mt my_mm nb_no ne_np nl_nl nso_za ny_mw
    oc_fr om_et or_in pa_in pl_pl ps_af pt_br ro_ro ru_ru sd_in sk_sk sl_si sn_zw so_so sr_rs sv_se sw_ke ta_in
    te_in tg_tj th_th tr_tr uk_ua umb_ao ur_pk uz_uz vi_vn wo_sn xh_za yo_ng yue_hant_hk zu_za""".split()
)

# FLEURS language parts that Whisper knows under another code.
_FLEURS_RENAMED = {
    "cmn": "zh",  # Mandarin: Whisper's "chinese"
    "nb": "no",  # Norwegian Bokmål: Whisper's "norwegian" (it has "nn" for Nynorsk separately)
    "jv": "jw",  # Javanese: Whisper kept the withdrawn code "jw"
    "fil": "tl",  # Filipino is standardised Tagalog
}

# FLEURS languages with no Whisper language token. Mapping them to a "closest" language would
# silently measure a different language, so they are refused.
_FLEURS_UNSUPPORTED = {
    "ast": "Asturian",
    "ceb": "Cebuano",
    "ckb": "Central Kurdish",
    "ff": "Fula",
    "ga": "Irish",
    "ig": "Igbo",
    "kam": "Kamba",
    "kea": "Kabuverdianu",
    "ky": "Kyrgyz",
    "lg": "Ganda",
    "luo": "Luo",
    "nso": "Northern Sotho",
    "ny": "Nyanja",
    "om": "Oromo",
    "or": "Odia",
    "umb": "Umbundu",
    "wo": "Wolof",
    "xh": "Xhosa",
    "zu": "Zulu",
}


# ISO 639-3 codes of Whisper's languages. Where ISO 639-3 splits a macrolanguage, the individual language that
# FLORES-200, NLLB and Omnilingual ASR use comes first ("arb" Standard Arabic, "zsm" Standard Malay, "pes" Iranian
# Persian), then the macrolanguage ("ara", "msa", "fas"), which names the same Whisper language.
_WHISPER_ISO639_3 = {
    "en": "eng", "zh": "cmn zho", "de": "deu", "es": "spa", "ru": "rus", "ko": "kor", "fr": "fra", "ja": "jpn",
    "pt": "por", "tr": "tur", "pl": "pol", "ca": "cat", "nl": "nld", "ar": "arb ara", "sv": "swe", "it": "ita",
    "id": "ind", "hi": "hin", "fi": "fin", "vi": "vie", "he": "heb", "uk": "ukr", "el": "ell", "ms": "zsm msa",
    "cs": "ces", "ro": "ron", "da": "dan", "hu": "hun", "ta": "tam", "no": "nob nor", "th": "tha", "ur": "urd",
    "hr": "hrv", "bg": "bul", "lt": "lit", "la": "lat", "mi": "mri", "ml": "mal", "cy": "cym", "sk": "slk",
    "te": "tel", "fa": "pes fas", "lv": "lvs lav", "bn": "ben", "sr": "srp", "az": "azj aze", "sl": "slv",
    "kn": "kan", "et": "ekk est", "mk": "mkd", "br": "bre", "eu": "eus", "is": "isl", "hy": "hye", "ne": "npi nep",
    "mn": "khk mon", "bs": "bos", "kk": "kaz", "sq": "als sqi", "sw": "swh swa", "gl": "glg", "mr": "mar",
    "pa": "pan", "si": "sin", "km": "khm", "sn": "sna", "yo": "yor", "so": "som", "af": "afr", "oc": "oci",
    "ka": "kat", "be": "bel", "tg": "tgk", "sd": "snd", "gu": "guj", "am": "amh", "yi": "ydd yid", "lo": "lao",
    "uz": "uzn uzb", "fo": "fao", "ht": "hat", "ps": "pbt pus", "tk": "tuk", "nn": "nno", "mt": "mlt", "sa": "san",
    "lb": "ltz", "my": "mya", "bo": "bod", "tl": "tgl fil", "mg": "plt mlg", "as": "asm", "tt": "tat", "haw": "haw",
    "ln": "lin", "ha": "hau", "ba": "bak", "jw": "jav", "su": "sun", "yue": "yue",
}  # fmt: skip
_ISO639_3_TO_WHISPER = {iso: whisper for whisper, codes in _WHISPER_ISO639_3.items() for iso in codes.split()}

# ISO 639-3 codes of the FLEURS languages with no Whisper token (the keys of _FLEURS_UNSUPPORTED where those are
# ISO 639-1): "fuv" Nigerian Fulfulde, "gaz" West Central Oromo, "ory" Odia, as FLORES-200 writes them.
_ISO639_3_UNSUPPORTED = {
    "ful": "ff", "fuv": "ff", "gle": "ga", "ibo": "ig", "kir": "ky", "lug": "lg", "nya": "ny", "orm": "om",
    "gaz": "om", "ori": "or", "ory": "or", "wol": "wo", "xho": "xh", "zul": "zu",
}  # fmt: skip


# ISO 639-1 -> ISO 639-3 candidates, in order (the macrolanguage first, then its main individual language).
ISO639_3: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
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


def iso639_3(code: str) -> tuple[str, ...]:
    """ISO 639-3 candidates of a store code in any of the module docstring's systems, most likely first: ``en_us`` ->
    ``("eng",)``, ``cmn_hans_cn`` -> ``("cmn", "zho")``, ``fa`` -> ``("fas", "pes")``, ``ast`` -> ``("ast",)``;
    ``()`` for a two-letter code the table lacks."""
    first = _first_part(code)
    return ISO639_3.get(first, (first,) if len(first) == 3 else ())


def _first_part(code: str) -> str:
    return code.strip().lower().replace("-", "_").split("_", 1)[0]


def fleurs_to_whisper(code: str) -> str:
    """Whisper language code of a language code in any of the module docstring's systems: ``"en_us" -> "en"``,
    ``"cmn_hans_cn" -> "zh"``, ``"nb_no" -> "no"``, ``"eng_Latn" -> "en"``, ``"arb_Arab" -> "ar"``, ``"de" -> "de"``.

    The rule: the part before the first ``_`` (the script or region after it does not change the language) when
    Whisper knows it, else the few renames FLEURS needs, else its ISO 639-3 code. Raises ``LanguageError`` for
    languages Whisper has no token for and for unknown codes. ``"yue"`` is returned for Cantonese even though only
    100-language models have its token.
    """
    first = _first_part(code)
    if first in LANGUAGES:
        return first
    if first in _FLEURS_RENAMED:
        return _FLEURS_RENAMED[first]
    if first in _ISO639_3_TO_WHISPER:
        return _ISO639_3_TO_WHISPER[first]
    unsupported = _ISO639_3_UNSUPPORTED.get(first, first)
    if unsupported in _FLEURS_UNSUPPORTED:
        raise LanguageError(
            f"language {code!r} ({_FLEURS_UNSUPPORTED[unsupported]}) has no Whisper language token; "
            "leave it out of Whisper runs"
        )
    supported = [c for c in FLEURS_LANGUAGES if c.split("_", 1)[0] not in _FLEURS_UNSUPPORTED]
    raise LanguageError(
        f"unknown FLEURS language code {code!r}; Whisper supports: {', '.join(supported)} (as FLEURS codes; also "
        "Whisper's own codes such as 'en', and ISO 639-3 codes with a script such as 'eng_Latn')"
    )


def whisper_code_or_none(code: str) -> str | None:
    """``fleurs_to_whisper(code)``, or None for a language Whisper has no token for (or an unknown code): the
    normaliser's language and a trainer's prompt language where one may be missing."""
    try:
        return fleurs_to_whisper(code)
    except LanguageError:
        return None


def language_key(code: str) -> str:
    """What two datasets' codes for one language have in common: its Whisper code (``en_us``, ``eng_Latn`` and
    ``en`` -> ``"en"``), else the FLEURS language of a language Whisper lacks (``zu_za`` and ``zul_Latn`` ->
    ``"zu"``), else the code itself, lower-cased (two unknown codes match only when they are equal)."""
    try:
        return fleurs_to_whisper(code)
    except LanguageError:
        first = _first_part(code)
        first = _ISO639_3_UNSUPPORTED.get(first, first)
        return first if first in _FLEURS_UNSUPPORTED else code.strip().lower().replace("-", "_")


def is_english(code: str) -> bool:
    """Whether store code ``code`` names English (``en_us``, ``eng_Latn``, ``en``)."""
    return language_key(code) == "en"


def text_code(code: str) -> str:
    """The code the text tools read ``code``'s language by (``engine.text``: Whisper's normalisers, sacrebleu's
    tokenisers, espeak-ng's voices): its code in ``LANGUAGES`` (ISO 639-1 where there is one) where this module knows
    the language (``en_us`` -> ``en``, ``cmn_hans_cn`` -> ``zh``, ``eng_Latn`` -> ``en``), else ``code`` as it is
    (``zu_za``, whose region picks espeak-ng's voice)."""
    try:
        return fleurs_to_whisper(code)
    except LanguageError:
        return code


def to_fleurs(code: str) -> str:
    """The FLEURS configuration of ``code``'s language: ``"eng_Latn" -> "en_us"``, ``"cmn_Hans" -> "cmn_hans_cn"``,
    ``"zul_Latn" -> "zu_za"``; ``LanguageError`` when FLEURS has no such language."""
    key = language_key(code)
    for fleurs in FLEURS_LANGUAGES:
        if language_key(fleurs) == key:
            return fleurs
    raise LanguageError(f"FLEURS has no language {code!r}; its configurations are: {', '.join(FLEURS_LANGUAGES)}")
