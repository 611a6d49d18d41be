"""Parallel ids checked where a dataset is listed: counts per language pair, and the refusals with their fix."""

import pytest

from engine.data.pairing import check_listing, pairing_lines, shared_after_skips, shared_ids
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


def test_the_pairs_left_after_a_runs_skips_are_counted_and_named():
    """The encode job's closing lines: a clip it skipped (corrupt, silent) leaves its pair short, and the count says
    so beside the listing's, instead of the listing's count standing for what the store can score."""
    listing = {"en": utts("en", "a", "b", "c"), "de": utts("de", "a", "b", "c"), "fr": utts("fr", "a")}
    left = shared_after_skips(listing, {"SilentAudioError": [("en", "a")], "AudioDecodeError": [("de", "b")]})
    assert left == {("de", "en"): 1, ("de", "fr"): 1, ("en", "fr"): 0}
    assert shared_after_skips(listing, {}) == shared_ids(listing)
    assert pairing_lines(left, "shared ids without the 2 skipped utterances") == [
        "shared ids without the 2 skipped utterances per language pair: de-en 1, de-fr 1, en-fr 0"
    ]


def test_no_shared_id_is_refused_with_the_fix_unless_allowed():
    listing = {"fr": utts("fr", "fleurs-fr-000"), "pt": utts("pt", "fleurs-pt-000")}
    with pytest.raises(DatasetError, match="no utterance id is shared.*same file name in every language folder"):
        check_listing(listing, "dataset 'folder:/clips'")
    assert check_listing(listing, "d", allow_unpaired=True) == {("fr", "pt"): 0}


def test_an_empty_listing_is_refused_unless_allowed():
    with pytest.raises(DatasetError, match="has no utterances in languages \\['en'\\].*--allow_empty"):
        check_listing({"en": []}, "dataset 'manifest:m.csv' split 'test'")
    assert check_listing({"en": []}, "d", allow_empty=True) == {}


def test_the_encode_summary_says_both_counts_only_when_a_skip_changed_one():
    from engine.pipelines.encode.run import EncodeSummary

    listing = {"en": utts("en", "a", "b"), "de": utts("de", "a", "b")}
    summary = EncodeSummary(done=3, shared_ids=shared_ids(listing))
    summary.skip("EmptyAudioError", "en", "b")
    summary.shared_stored = shared_after_skips(listing, summary.skipped)
    report = summary.report()
    assert (
        "shared ids per language pair: de-en 2\nshared ids without the 1 skipped utterances per language pair: de-en 1"
        in report
    )
    clean = EncodeSummary(done=4, shared_ids=shared_ids(listing), shared_stored=shared_ids(listing))
    assert "skipped utterances per language pair" not in clean.report()
