"""The challenge-set filter on hand-made sentence pairs (espeak-ng phonemises a few words; no store)."""

import sys
import types

import pytest

from engine.analysis import challenge
from engine.analysis.phones import PhonesError, espeak_voice

BOOK = challenge.PhoneBook()  # shared: each word is phonemised once for the whole module


def flag(a, text_a, b, text_b, **config):
    return challenge.flag_pair(a, text_a, b, text_b, challenge.FilterConfig(**config), BOOK)


def test_a_shared_name_or_number_is_removed_and_named():
    paris = flag("en", "We flew to Paris on Monday.", "de", "Wir flogen am Montag nach Paris.")
    assert not paris.kept and challenge.NAMES_NUMBERS in paris.reasons
    assert any("Paris" in e for e in paris.evidence)
    year = flag("en", "It opened in 2019.", "es", "Se abrió en 2019.")
    assert not year.kept and year.reason == challenge.NAMES_NUMBERS and "number 2019" in year.evidence
    # Accents folded for a capitalised name; separators dropped in numbers.
    assert not flag("en", "The train to Berlin is late.", "es", "El tren a Berlín llega tarde.").kept
    assert challenge.numbers("1,000 and 7:30") == {"1000", "730"}


def test_translations_without_a_shortcut_are_kept():
    dog = flag("de", "Der Hund bellt.", "en", "The dog barks.")
    assert dog.kept and dog.reason == "" and dog.evidence == ()
    assert dog.min_distance >= challenge.DEFAULT_PHONE_THRESHOLD
    # Germanic cognates are what the sound rule is for: de "schläft" / en "sleeps" is 0.07 apart.
    assert not flag("de", "Der Hund schläft.", "en", "The dog sleeps.").kept


def test_a_cognate_is_removed_at_the_default_threshold_with_its_distance():
    phone = flag("de", "Wo ist mein Telefon?", "en", "Where is my telephone?")
    assert not phone.kept and phone.reasons == (challenge.SOUND_ALIKE,)
    (evidence,) = phone.evidence
    assert evidence.startswith("telefon~telephone ") and float(evidence.split()[-1]) < challenge.DEFAULT_PHONE_THRESHOLD
    # Above the threshold it stays: the verdict follows the threshold, not a word list.
    assert flag("de", "Wo ist mein Telefon?", "en", "Where is my telephone?", phone_threshold=0.1).kept


def test_short_words_are_not_compared():
    # en "the" / de "der" are 0.33 apart and would flag every pair at a loose threshold; 2-3 phones are too few.
    assert flag("en", "the", "de", "der", phone_threshold=0.5).kept


def test_summary_counts_the_chosen_threshold_as_the_flags_do():
    flags = {
        "a": flag("de", "Wo ist mein Telefon?", "en", "Where is my telephone?"),
        "b": flag("de", "Der Hund bellt.", "en", "The dog barks."),
        "c": flag("en", "It opened in 2019.", "es", "Se abrió en 2019."),
    }
    rows = {r[2]: r for r in challenge.summary_rows("de", "en", flags, 0.16)}
    assert rows[0.16][3:] == (3, sum(f.kept for f in flags.values()), 1, 1)
    assert rows[0.1][4] == 2  # the cognate is kept when the threshold is below its distance


def test_codes_find_espeak_voices_regional_first():
    # espeak-ng has no plain "fr" voice, only fr-fr / fr-be / fr-ch; FLEURS's codes name the region.
    got = [espeak_voice(c) for c in ("fr", "fr_fr", "pt_br", "pt", "es_419", "en", "de_de", "zh")]
    assert got == ["fr-fr", "fr-fr", "pt-br", "pt", "es-419", "en-us", "de", "cmn"]
    assert not flag("fr", "Où est mon téléphone ?", "en", "Where is my telephone?").kept


def test_a_language_without_a_voice_names_the_voices_espeak_has():
    with pytest.raises(PhonesError, match=r"no voice for \['xx'\].*espeak-ng has.*\ben\b"):
        challenge.require_voices(["en", "xx"])


# --- spaCy entities: no spaCy pipeline is installable here, so a stand-in module exposes the API the filter uses
# (spacy.util.get_installed_models, spacy.load, nlp.pipe_factories, doc.ents[i].text) ---------------------------------


class FakeSpan:
    def __init__(self, text):
        self.text = text


class FakeNlp:
    """An entity ruler: marks the given phrases wherever they occur, as spaCy's EntityRuler does."""

    def __init__(self, phrases, factories=(("entity_ruler", "entity_ruler"),)):
        self.phrases, self.pipe_factories = phrases, dict(factories)

    def __call__(self, text):
        return types.SimpleNamespace(ents=[FakeSpan(p) for p in self.phrases if p in text])


@pytest.fixture
def fake_spacy(monkeypatch):
    """A stand-in ``spacy`` module with installed pipelines ``de_fake`` and ``en_fake`` (both marking Zürich /
    Zurich) and ``de_blank`` (no entity component); the pipeline cache is cleared around the test."""
    pipelines = {
        "de_fake": FakeNlp(["Zürich"]),
        "en_fake": FakeNlp(["Zurich"]),
        "de_blank": FakeNlp([], factories=(("tok2vec", "tok2vec"),)),
    }
    installed = ["en_fake", "de_fake"]

    def load(name):
        if name not in pipelines:
            raise OSError(f"[E050] Can't find model '{name}'")
        return pipelines[name]

    module = types.SimpleNamespace(load=load, util=types.SimpleNamespace(get_installed_models=lambda: installed))
    monkeypatch.setitem(sys.modules, "spacy", module)
    challenge.spacy_pipeline.cache_clear()
    yield installed
    challenge.spacy_pipeline.cache_clear()


# Both sentences open with the name, spelled differently: neither capitalised-inside nor verbatim-spelling sees it.
ZURICH = ("de", "Zürich liegt an einem See.", "en", "Zurich lies on a lake.")


def test_spacy_entities_count_as_names_where_the_heuristic_misses(fake_spacy):
    assert not flag(*ZURICH).names_numbers  # the heuristic alone misses it (the sound rule may still flag it)
    found = flag(*ZURICH, ner=True)
    assert found.names_numbers and not found.kept and challenge.NAMES_NUMBERS in found.reasons
    assert "name Zürich=Zurich" in found.evidence
    # An explicit pipeline per language wins over the installed one found by prefix.
    blank = challenge.FilterConfig(ner=True, ner_models=(("de", "de_blank"),))
    with pytest.raises(challenge.ChallengeError, match=r"'de_blank'.*no entity component.*\['tok2vec'\]"):
        challenge.flag_pair(*ZURICH, blank, BOOK)


def test_spacy_without_a_pipeline_for_the_language_is_an_error_naming_the_fix(fake_spacy):
    fake_spacy.remove("de_fake")
    with pytest.raises(challenge.ChallengeError, match=r"no pipeline for 'de'.*de_\*.*spacy download de_core_news_sm"):
        flag(*ZURICH, ner=True)
    fake_spacy.append("xx_fake")  # a multi-language pipeline serves every language without its own
    with pytest.raises(challenge.ChallengeError, match=r"cannot load pipeline 'xx_fake' for 'de'"):
        flag(*ZURICH, ner=True)
    with pytest.raises(challenge.ChallengeError, match=r"ner_models .* without ner"):
        challenge.FilterConfig(ner_models=(("de", "x"),))


def test_ner_without_spacy_is_an_error_not_a_silent_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy raises ImportError, installed or not
    challenge.spacy_pipeline.cache_clear()
    with pytest.raises(challenge.ChallengeError, match=r"needs spaCy, which is not installed: pip install spacy"):
        flag(*ZURICH, ner=True)
    challenge.spacy_pipeline.cache_clear()
