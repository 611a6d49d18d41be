import pytest

from engine.text.metrics import cer, error_rate, normalize_text, wer


def test_normalize():
    assert normalize_text("Hello, World!  It's 5 o'clock.") == "hello world it s 5 o clock"
    assert normalize_text("Ça va? Très «bien»…") == "ça va très bien"
    assert normalize_text("ﬁne") == "fine"  # NFKC
    assert normalize_text("a (laughs) b [Music] c") == "a b c"  # Whisper's basic normaliser drops these
    assert normalize_text("हिन्दी") == "हिन्दी"  # vowel signs and virama kept (preserve_marks)


def test_wer_cer():
    # Expected values counted by hand: they check our normalisation and corpus pooling, not jiwer's DP.
    assert wer(["the cat sat"], ["the cat sat"]) == 0
    assert wer(["the cat sat"], ["The cat, sad."]) == pytest.approx(1 / 3)
    # Corpus rate (2 edits over 5 words), not the mean of per-utterance rates (0.5 + 1/3) / 2.
    assert wer(["a b", "c d e"], ["a", "c d e f"]) == pytest.approx(2 / 5)
    assert wer(["a b", "!!"], ["a b", "x"]) == pytest.approx(1 / 2)  # an empty reference adds insertions only
    assert cer(["abc"], ["abd"]) == pytest.approx(1 / 3)
    assert cer(["ab cd"], ["abcd"]) == 0  # spaces are not characters to CER here
    assert cer(["kitten"], ["sitting"]) == pytest.approx(3 / 6)
    with pytest.raises(ValueError, match="2 references but 1"):
        wer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="empty"):
        wer(["!!"], ["a"])
    with pytest.raises(ValueError, match="unit must be"):
        error_rate(["a"], ["a"], unit="phone")
