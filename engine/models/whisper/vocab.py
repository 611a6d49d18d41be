"""The vocabulary side of Whisper's tokenizer: GPT-2's byte alphabet, the special tokens' texts and ids, and the
bytes of every token (``engine.models.whisper.tokenizer`` builds the tokenizer on these; the id layout is in its
docstring)."""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping

from engine.errors import CheckpointError
from engine.languages import LANGUAGES

TIMESTAMP_STEP = 0.02  # seconds between two timestamp tokens
N_TIMESTAMPS = 1501  # <|0.00|> ... <|30.00|>
TASKS = ("transcribe", "translate")

# Older Hugging Face tokenizer.json files (e.g. tiny.en) spell Hebrew with its withdrawn ISO code.
_TOKEN_ALIASES = {"he": ("he", "iw")}


@functools.lru_cache(maxsize=1)
def byte_to_char() -> tuple[str, ...]:
    """GPT-2's byte-level alphabet: byte b is written as this printable character in vocab strings."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in table):
        table[b] = chr(256 + n)
    return tuple(table[b] for b in range(256))


@functools.lru_cache(maxsize=1)
def char_to_byte() -> Mapping[str, int]:
    return types.MappingProxyType({c: b for b, c in enumerate(byte_to_char())})


def bytes_to_token_text(data: bytes) -> str:
    alphabet = byte_to_char()
    return "".join(alphabet[b] for b in data)


def timestamp_text(index: int) -> str:
    return f"<|{index * TIMESTAMP_STEP:.2f}|>"


def special_texts(num_languages: int) -> list[str]:
    """OpenAI's special tokens in id order, starting at eot."""
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *(f"<|{code}|>" for code in list(LANGUAGES)[:num_languages]),
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *(timestamp_text(i) for i in range(N_TIMESTAMPS)),
    ]


def check_num_languages(num_languages: int) -> int:
    if not isinstance(num_languages, int) or not 1 <= num_languages <= len(LANGUAGES):
        raise ValueError(
            f"num_languages must be an int in 1..{len(LANGUAGES)} (99, or 100 from large-v3), got {num_languages!r}"
        )
    return num_languages


def special_ids(vocab: Mapping[str, int], num_languages: int, source: str) -> tuple[dict[str, int], tuple[int, ...]]:
    """Special ids looked up by text, checked against OpenAI's layout; and the language ids in LANGUAGES order."""

    def lookup(*texts: str) -> int:
        for text in texts:
            if text in vocab:
                return vocab[text]
        raise CheckpointError(f"{source} has no {' or '.join(texts)} token; is it a Whisper tokenizer?")

    ids = {
        "eot": lookup("<|endoftext|>"),
        "sot": lookup("<|startoftranscript|>"),
        "translate": lookup("<|translate|>"),
        "transcribe": lookup("<|transcribe|>"),
        "sot_lm": lookup("<|startoflm|>"),
        "sot_prev": lookup("<|startofprev|>"),
        "no_speech": lookup("<|nospeech|>", "<|nocaptions|>"),  # renamed in 2023
        "no_timestamps": lookup("<|notimestamps|>"),
    }
    codes = tuple(LANGUAGES)[:num_languages]
    language_ids = tuple(lookup(*(f"<|{t}|>" for t in _TOKEN_ALIASES.get(c, (c,)))) for c in codes)
    # Older tokenizer.json files (tiny.en) stop at <|notimestamps|>; the model's timestamps follow it.
    ids["timestamp_begin"] = vocab.get(timestamp_text(0), ids["no_timestamps"] + 1)

    # The decoder relies on this layout ("id >= eot is special"), so a vocabulary that breaks it is refused.
    expected = {"sot": ids["eot"] + 1, "translate": ids["sot"] + 1 + num_languages}
    for offset, name in enumerate(("transcribe", "sot_lm", "sot_prev", "no_speech", "no_timestamps"), 1):
        expected[name] = ids["translate"] + offset
    expected["timestamp_begin"] = ids["no_timestamps"] + 1
    for name, want in expected.items():
        if ids[name] != want:
            raise CheckpointError(
                f"{source}: {name} has id {ids[name]}, but OpenAI's layout for a {num_languages}-language "
                f"model puts it at {want}; does num_languages={num_languages} match the checkpoint?"
            )
    if language_ids != tuple(range(ids["sot"] + 1, ids["sot"] + 1 + num_languages)):
        raise CheckpointError(f"{source}: language tokens are not sot+1 .. sot+{num_languages} in LANGUAGES order")
    return ids, language_ids


def token_bytes(vocab: Mapping[str, int], added: Mapping[int, str], timestamp_begin: int, source: str):
    """``bytes[n_vocab]``: what each id decodes to. Specials are their text; missing timestamps are made up."""
    n_vocab = timestamp_begin + N_TIMESTAMPS
    table: list[bytes | None] = [None] * n_vocab
    to_byte = char_to_byte()
    for text, i in vocab.items():
        if i >= n_vocab:
            raise CheckpointError(f"{source}: token {text!r} has id {i}, past the last timestamp ({n_vocab - 1})")
        if i in added:
            table[i] = added[i].encode()
            continue
        try:
            table[i] = bytes(to_byte[c] for c in text)
        except KeyError:
            raise CheckpointError(
                f"{source}: token {text!r} is not byte-level BPE; is it a Whisper tokenizer?"
            ) from None
    for k in range(N_TIMESTAMPS):
        i = timestamp_begin + k
        if table[i] is None:
            table[i] = timestamp_text(k).encode()
        elif table[i] != timestamp_text(k).encode():
            raise CheckpointError(f"{source}: id {i} is {table[i]!r}, expected timestamp {timestamp_text(k)}")
    missing = [i for i, b in enumerate(table) if b is None]
    if missing:
        raise CheckpointError(f"{source}: no token for ids {missing[:10]}{'...' if len(missing) > 10 else ''}")
    return tuple(table)
