"""Whisper's languages: OpenAI's language table and order, and the FLEURS codes that map onto it.

``LANGUAGES`` order is token order: the i-th entry is the language token ``sot + 1 + i``
(see ``engine.models.whisper.tokenizer``). FLEURS (google/fleurs) names its configurations
``<ISO 639 code>_<region or script>``; ``fleurs_to_whisper`` maps them to Whisper codes.
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


def fleurs_to_whisper(code: str) -> str:
    """Whisper language code of a FLEURS code: ``"en_us" -> "en"``, ``"cmn_hans_cn" -> "zh"``, ``"nb_no" -> "no"``.

    The rule: the part before the first ``_`` when Whisper knows it, else the few renames FLEURS needs.
    Raises ``LanguageError`` for FLEURS languages Whisper has no token for and for unknown codes.
    ``"yue"`` is returned for Cantonese even though only 100-language models have its token.
    """
    normalized = code.strip().lower().replace("-", "_")
    first = normalized.split("_", 1)[0]
    if first in LANGUAGES:
        return first
    if first in _FLEURS_RENAMED:
        return _FLEURS_RENAMED[first]
    if first in _FLEURS_UNSUPPORTED:
        raise LanguageError(
            f"FLEURS language {code!r} ({_FLEURS_UNSUPPORTED[first]}) has no Whisper language token; "
            "leave it out of Whisper runs"
        )
    supported = [c for c in FLEURS_LANGUAGES if c.split("_", 1)[0] not in _FLEURS_UNSUPPORTED]
    raise LanguageError(f"unknown FLEURS language code {code!r}; Whisper supports: {', '.join(supported)}")
