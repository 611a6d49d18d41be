"""Parallel ids checked where a dataset is listed: counts per language pair, and the refusals with their fix."""

import pytest

from engine.data.pairing import check_listing, pairing_lines, shared_ids
from engine.data.utterance import DatasetError, Utterance


def utts(lang, *ids):
    return [Utterance(id=i, lang=lang, audio=f"/x/{lang}/{i}.wav", path=f"/x/{lang}/{i}.wav") for i in ids]


def test_shared_counts_and_lines():
    listing = {"en": utts("en", "a", "b", "c"), "de": utts("de", "a", "b"), "fr": utts("fr", "z")}
    shared = check_listing(listing, "dataset 'folder:x'")
    assert shared == {("de", "en"): 2, ("de", "fr"): 0, ("en", "fr"): 0}
    assert pairing_lines(shared) == ["shared ids per language pair: de-en 2, de-fr 0, en-fr 0"]
    many = shared_ids({f"l{i:02d}": utts(f"l{i:02d}", "a", *(["b"] if i % 2 else [])) for i in range(8)})
    (line,) = pairing_lines(many)
    assert line.startswith("shared ids over 28 language pairs: min 1, median 1, max 2")
    assert pairing_lines(shared_ids({"en": utts("en", "a")})) == []  # one language: nothing to pair


def test_no_shared_id_is_refused_with_the_fix_unless_allowed():
    listing = {"fr": utts("fr", "fleurs-fr-000"), "pt": utts("pt", "fleurs-pt-000")}
    with pytest.raises(DatasetError, match="no utterance id is shared.*same file name in every language folder"):
        check_listing(listing, "dataset 'folder:/clips'")
    assert check_listing(listing, "d", allow_unpaired=True) == {("fr", "pt"): 0}


def test_an_empty_listing_is_refused_unless_allowed():
    with pytest.raises(DatasetError, match="has no utterances in languages \\['en'\\].*--allow_empty"):
        check_listing({"en": []}, "dataset 'manifest:m.csv' split 'test'")
    assert check_listing({"en": []}, "d", allow_empty=True) == {}
