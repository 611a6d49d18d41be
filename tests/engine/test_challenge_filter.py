"""The challenge-set filter on hand-made sentence pairs (espeak-ng phonemises a few words; no store)."""

import math
import sys
import types

import numpy as np
import pytest

from engine.pipelines.challenge import rules as challenge
from engine.pipelines.challenge.run import summary_rows
from engine.stores.challenge import ChallengeError
from engine.text import soundalike
from engine.text.phones import PhonesError, espeak_voice

BOOK = soundalike.PhoneBook()  # shared: each word is phonemised once for the whole module


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
    assert dog.min_distance >= soundalike.DEFAULT_PHONE_THRESHOLD
    # Germanic cognates are what the sound rule is for: de "schläft" / en "sleeps" is 0.07 apart.
    assert not flag("de", "Der Hund schläft.", "en", "The dog sleeps.").kept


def test_a_cognate_is_removed_at_the_default_threshold_with_its_distance():
    phone = flag("de", "Wo ist mein Telefon?", "en", "Where is my telephone?")
    assert not phone.kept and phone.reasons == (challenge.SOUND_ALIKE,)
    (evidence,) = phone.evidence
    assert (
        evidence.startswith("telefon~telephone ") and float(evidence.split()[-1]) < soundalike.DEFAULT_PHONE_THRESHOLD
    )
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
    choice = soundalike.ThresholdChoice(0.16, soundalike.FIXED, (0.05, 0.15, 0.3, math.nan))
    rows = {r[2]: r for r in summary_rows("de", "en", flags, choice)}
    assert rows[0.16][3:] == (1, "fixed", 3, sum(f.kept for f in flags.values()), 1, 1, 4, 0.5)
    assert rows[0.1][3:5] == (0, "") and rows[0.1][6] == 2  # the cognate is kept below its distance
    assert rows[0.1][-1] == 0.25 and rows[0.25][-1] == 0.5  # the mismatched pairs' flag rate per rung; NaN never


# --- the threshold calibrated against chance: known distance distributions in, the answer known ---------------------


def allowed_threshold(distances, rate, cap):
    """Brute force: the largest t <= cap whose share of flagged pairs (d < t) is at most ``rate``. The share is a step
    function rising just after each distance, so the largest allowed t is a distance or the cap."""
    d = np.array([np.inf if math.isnan(x) else x for x in distances])
    candidates = [t for t in [*d[np.isfinite(d)], cap] if t <= cap]
    return max(t for t in candidates if np.mean(d < t) <= rate)


def test_the_chance_threshold_is_the_largest_that_flags_at_most_the_rate():
    calibration = soundalike.Calibration(flag_rate=0.05, cap=0.16)
    steps = [i / 100 for i in range(1, 101)]  # 100 mismatched pairs, 0.01 ... 1.00
    choice = soundalike.chance_threshold(steps[::-1], calibration)
    assert (choice.threshold, choice.rule, choice.mismatched_pairs) == (0.06, soundalike.CHANCE, 100)
    assert choice.mismatched_flagged() == 0.05 and choice.mismatched_flagged(np.nextafter(0.06, 1)) == 0.06
    # Ties: 10% of pairs at 0.05, the rest far: any threshold above 0.05 flags 10%, so 0.05 (flags none) is the most.
    assert soundalike.chance_threshold([0.05] * 10 + [0.5] * 90, calibration).threshold == 0.05
    # Chance allows more than the cap: the cap. NaN (no word long enough) is never flagged.
    far = soundalike.chance_threshold([0.3] * 50 + [math.nan] * 50, calibration)
    assert (far.threshold, far.rule, far.mismatched_flagged()) == (0.16, soundalike.CAP, 0.0)
    mostly_nan = soundalike.chance_threshold([0.01] * 3 + [math.nan] * 97, calibration)
    assert (mostly_nan.rule, mostly_nan.mismatched_flagged()) == (soundalike.CAP, 0.03)
    # Too few mismatched pairs to estimate a 5% rate: the cap, and the rule says why.
    assert soundalike.chance_threshold(steps[:19], calibration).rule == soundalike.CAP_TOO_FEW
    assert soundalike.chance_threshold(steps[:20], calibration).rule == soundalike.CHANCE
    # A fixed threshold is used as given; its chance rate is still measured.
    fixed = soundalike.chance_threshold(steps, soundalike.Calibration(threshold=0.1))
    assert (fixed.threshold, fixed.rule, fixed.mismatched_flagged()) == (0.1, soundalike.FIXED, 0.09)
    # Random distributions against the brute force, at several rates.
    rng = np.random.default_rng(0)
    for rate in (0.0, 0.01, 0.05, 0.2):
        for n in (20, 37, 200):
            d = rng.beta(4, 12, n).round(3).tolist()  # rounded: ties happen
            got = soundalike.chance_threshold(d, soundalike.Calibration(flag_rate=rate))
            assert got.threshold == allowed_threshold(d, rate, 0.16) and got.mismatched_flagged() <= rate
    with pytest.raises(ValueError, match="chance_flag_rate must be in"):
        soundalike.Calibration(flag_rate=1.0)
    with pytest.raises(ValueError, match="number in \\[0, 1\\] or 'auto'"):
        soundalike.Calibration(threshold="0.1")


def test_mismatched_pairs_are_seeded_draws_of_different_ids():
    ids = [f"s{i}" for i in range(10)]
    every = soundalike.mismatched_pairs(ids, ids + ["t"], 500, 0, "en", "de")
    assert len(every) == 100 and all(a != b for a, b in every)  # 10 x 11 cells less the 10 translations
    drawn = soundalike.mismatched_pairs(ids, ids, 30, 0, "en", "de")
    assert len(set(drawn)) == 30 and all(a != b and a in ids and b in ids for a, b in drawn)
    assert drawn == soundalike.mismatched_pairs(ids[::-1], ids, 30, 0, "en", "de")  # id order does not matter
    assert drawn != soundalike.mismatched_pairs(ids, ids, 30, 1, "en", "de")
    others = [f"t{i}" for i in range(9)]  # one draw per unordered pair: de, en swapped is en, de
    swapped = soundalike.mismatched_pairs(others, ids, 30, 0, "de", "en")
    assert [(b, a) for a, b in swapped] == soundalike.mismatched_pairs(ids, others, 30, 0, "en", "de")


class LettersBook:
    """A phone book whose phones are the word's letters: no espeak-ng."""

    def add(self, lang, tokens):
        pass

    def phones(self, lang, token):
        return tuple(token)


def test_calibration_on_a_fake_phone_distance_finds_the_known_threshold():
    # Sentence i is one word of 4 + i letters in both languages; the fake distance is the length difference / 100,
    # so mismatched pair (i, j) has min distance |i - j| / 100: of the 380 mismatched pairs of 20 ids, 38 are 0.01
    # apart. At most 5% (19) may be flagged: 0.01 (flags none); at most 10% (38): 0.02 (flags exactly the 38).
    def by_length(a, b):
        return abs(len(a) - len(b)) / 100

    words_a = {f"s{i:02d}": ["x" * (4 + i)] for i in range(20)}
    words_b = {f"s{i:02d}": ["y" * (4 + i)] for i in range(20)}

    def choose(**calibration):
        cal = soundalike.Calibration(max_pairs=1000, **calibration)
        return soundalike.choose_threshold(words_a, words_b, "en", "de", LettersBook(), cal, 4, by_length)

    five, ten = choose(flag_rate=0.05), choose(flag_rate=0.1)
    assert (five.threshold, five.rule, five.mismatched_pairs, five.mismatched_flagged()) == (0.01, "chance", 380, 0)
    assert (ten.threshold, ten.mismatched_flagged()) == (0.02, 0.1)
    assert (choose(flag_rate=0.1, cap=0.015).threshold, choose(flag_rate=0.1, cap=0.015).rule) == (0.015, "cap")
    # Words shorter than min_phones are never compared: the pair's min distance is NaN, never flagged.
    evidence, smallest = soundalike.sound_alike("en", ["abc"], "de", ["abd"], LettersBook(), 0.5, 4, by_length)
    assert evidence == [] and math.isnan(smallest)
    assert soundalike.sound_alike("en", ["abcd"], "de", ["abcde"], LettersBook(), 0.5, 4, by_length) == (
        ["abcd~abcde 0.01"], 0.01)  # fmt: skip


def test_codes_find_espeak_voices_regional_first():
    # espeak-ng has no plain "fr" voice, only fr-fr / fr-be / fr-ch; FLEURS's codes name the region.
    got = [espeak_voice(c) for c in ("fr", "fr_fr", "pt_br", "pt", "es_419", "en", "de_de", "zh")]
    assert got == ["fr-fr", "fr-fr", "pt-br", "pt", "es-419", "en-us", "de", "cmn"]
    assert not flag("fr", "Où est mon téléphone ?", "en", "Where is my telephone?").kept


def test_a_language_without_a_voice_names_the_voices_espeak_has():
    with pytest.raises(PhonesError, match=r"no voice for \['xx'\].*espeak-ng has.*\ben\b"):
        soundalike.require_voices(["en", "xx"])


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
    with pytest.raises(ChallengeError, match=r"'de_blank'.*no entity component.*\['tok2vec'\]"):
        challenge.flag_pair(*ZURICH, blank, BOOK)


def test_spacy_without_a_pipeline_for_the_language_is_an_error_naming_the_fix(fake_spacy):
    fake_spacy.remove("de_fake")
    with pytest.raises(ChallengeError, match=r"no pipeline for 'de'.*de_\*.*spacy download de_core_news_sm"):
        flag(*ZURICH, ner=True)
    fake_spacy.append("xx_fake")  # a multi-language pipeline serves every language without its own
    with pytest.raises(ChallengeError, match=r"cannot load pipeline 'xx_fake' for 'de'"):
        flag(*ZURICH, ner=True)
    with pytest.raises(ChallengeError, match=r"ner_models .* without ner"):
        challenge.FilterConfig(ner_models=(("de", "x"),))


def test_ner_without_spacy_is_an_error_not_a_silent_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "spacy", None)  # import spacy raises ImportError, installed or not
    challenge.spacy_pipeline.cache_clear()
    with pytest.raises(ChallengeError, match=r"needs spaCy, which is not installed: pip install spacy"):
        flag(*ZURICH, ner=True)
    challenge.spacy_pipeline.cache_clear()
