import pytest

from engine.analysis.text_metrics import cer, edit_distance, normalize_text, wer


def test_normalize():
    assert normalize_text("Hello, World!  It's 5 o'clock.") == "hello world it s 5 o clock"
    assert normalize_text("Ça va? Très «bien»…") == "ça va très bien"
    assert normalize_text("ﬁne") == "fine"  # NFKC


def test_edit_distance():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], ["a"]) == 1
    assert edit_distance(["a", "b"], ["a", "b"]) == 0


def test_wer_cer():
    assert wer(["the cat sat"], ["the cat sat"]) == 0
    assert wer(["the cat sat"], ["The cat, sad."]) == pytest.approx(1 / 3)
    assert wer(["a b", "c d e"], ["a", "c d e f"]) == pytest.approx(2 / 5)
    assert cer(["abc"], ["abd"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="2 references but 1"):
        wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        wer(["!!"], ["a"])
