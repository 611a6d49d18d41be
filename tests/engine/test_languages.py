"""Language codes in three systems (Whisper's, FLEURS's, ISO 639-3 with a script as Omnilingual ASR, FLORES-200 and
NLLB write them) mapped to Whisper's, to one key two stores are matched by, and to FLEURS's configurations."""

from __future__ import annotations

import pytest

from engine.errors import LanguageError
from engine.languages import (
    FLEURS_LANGUAGES,
    LANGUAGES,
    fleurs_to_whisper,
    is_english,
    language_key,
    text_code,
    to_fleurs,
)
from engine.stores.schema import check_language_code


@pytest.mark.parametrize(
    ("code", "whisper", "fleurs"),
    [
        ("eng_Latn", "en", "en_us"),
        ("deu_Latn", "de", "de_de"),
        ("spa_Latn", "es", "es_419"),
        ("cmn_Hans", "zh", "cmn_hans_cn"),
        ("zho_Hant", "zh", "cmn_hans_cn"),  # the macrolanguage names the same Whisper language
        ("yue_Hant", "yue", "yue_hant_hk"),
        ("arb_Arab", "ar", "ar_eg"),
        ("pes_Arab", "fa", "fa_ir"),
        ("nob_Latn", "no", "nb_no"),
        ("jav_Latn", "jw", "jv_id"),
        ("tgl_Latn", "tl", "fil_ph"),
        ("zsm_Latn", "ms", "ms_my"),
        ("khk_Cyrl", "mn", "mn_mn"),
        ("eng", "en", "en_us"),  # no script
        ("ENG-LATN", "en", "en_us"),
    ],
)
def test_iso639_3_codes_map_to_whisper_and_fleurs(code, whisper, fleurs):
    assert fleurs_to_whisper(code) == whisper == language_key(code) == language_key(fleurs)
    assert to_fleurs(code) == fleurs
    assert check_language_code(code) == code  # every such code names a store folder as it is


def test_every_whisper_language_has_an_iso639_3_code_that_maps_back():
    from engine.languages import _WHISPER_ISO639_3

    assert set(_WHISPER_ISO639_3) == set(LANGUAGES)
    for whisper, codes in _WHISPER_ISO639_3.items():
        for code in codes.split():
            assert len(code) == 3 and fleurs_to_whisper(f"{code}_Latn") == whisper, code
    all_codes = [c for codes in _WHISPER_ISO639_3.values() for c in codes.split()]
    assert len(all_codes) == len(set(all_codes)), "an ISO 639-3 code names two Whisper languages"


def test_fleurs_and_whisper_codes_keep_their_meaning():
    for code in FLEURS_LANGUAGES:
        assert to_fleurs(code) == code  # each FLEURS language is its own configuration
    for code in LANGUAGES:
        assert fleurs_to_whisper(code) == code == language_key(code)


def test_languages_whisper_lacks_are_refused_by_name_and_still_matched():
    for code in ("zul_Latn", "gle_Latn", "ory_Orya", "ast_Latn"):
        with pytest.raises(LanguageError, match=rf"{code!r}.*no Whisper language token"):
            fleurs_to_whisper(code)
    assert language_key("zul_Latn") == language_key("zu_za") == "zu" and to_fleurs("zul_Latn") == "zu_za"
    assert language_key("xyz_Latn") == "xyz_latn" != language_key("xyz_Cyrl")  # unknown codes match only themselves
    with pytest.raises(LanguageError, match=r"unknown FLEURS language code 'xyz_Latn'.*'eng_Latn'"):
        fleurs_to_whisper("xyz_Latn")
    with pytest.raises(LanguageError, match=r"FLEURS has no language 'xyz_Latn'"):
        to_fleurs("xyz_Latn")


def test_the_neutral_questions_answer_as_whisper_s_codes_did():
    """What jobs ask instead of Whisper's codes gives what those gave: English is the code whose Whisper code is en,
    and the text tools read a language by its Whisper code, or by the code itself where Whisper lacks it."""
    for code in (*FLEURS_LANGUAGES, *LANGUAGES, "eng_Latn", "ENG", "en-US", "zul_Latn", "xyz_Latn", "EN_us"):
        try:
            whisper = fleurs_to_whisper(code)
        except LanguageError:
            whisper = None
        assert is_english(code) == (whisper == "en"), code
        assert text_code(code) == (code if whisper is None else whisper), code
    assert [c for c in FLEURS_LANGUAGES if is_english(c)] == ["en_us"]


def test_words_of_a_language_are_found_under_another_system_s_code(tmp_path):
    """interp reads words aligned on a Whisper store (``en_us``) for a store coded ``eng_Latn``: one match is taken,
    none or several are refused, naming what the output holds."""
    from engine.stores.words import WordsError, words_language

    for lang in ("en_us", "de", "spa_Latn"):
        (tmp_path / lang).mkdir()
        (tmp_path / lang / "words.parquet").write_bytes(b"")
    assert words_language(str(tmp_path), "de") == "de"
    assert words_language(str(tmp_path), "eng_Latn") == "en_us"
    assert words_language(str(tmp_path), "deu_Latn") == "de" and words_language(str(tmp_path), "es_419") == "spa_Latn"
    with pytest.raises(WordsError, match=r"no fra_Latn/words.parquet.*\['de', 'en_us', 'spa_Latn'\]"):
        words_language(str(tmp_path), "fra_Latn")
    (tmp_path / "en").mkdir()
    (tmp_path / "en" / "words.parquet").write_bytes(b"")
    with pytest.raises(WordsError, match=r"\['en', 'en_us'\] all name its language"):
        words_language(str(tmp_path), "eng_Latn")
