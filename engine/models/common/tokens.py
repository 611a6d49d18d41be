"""What the families share of transformers' detokenisation: ``PreTrainedTokenizerBase.clean_up_tokenization``."""

from __future__ import annotations

# transformers' PreTrainedTokenizerBase.clean_up_tokenization, in its order
CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
            (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))  # fmt: skip


def clean_up_tokenization(text: str) -> str:
    """``text`` with the spaces before punctuation and English contractions removed, as transformers does when a
    tokenizer's ``clean_up_tokenization_spaces`` is set."""
    for old, new in CLEAN_UP:
        text = text.replace(old, new)
    return text
