"""The encode job's config: what to encode and how (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses

from engine.data.audio import LONG_AUDIO_MODES
from engine.data.sources import dataset_locations
from engine.dtypes import DTYPES
from engine.runtime.options import ConfigError, RunOptions, option, validate

# The longest recording encoded whole: 10 minutes, 14x FLEURS's longest clip (43 s). A longer one is a recording not
# cut into utterances, which would pad its language's every shard to its length, and whose own shard is compressed and
# written whole in host memory: a 2-hour file through whisper-base (8 layers, float32, 5.5 GiB of states) peaked at
# 23 GB of host memory.
MAX_SECONDS = 600.0
STORAGE_DTYPES = tuple(DTYPES)  # as engine.stores.schema.DTYPES: every dtype babelgrid names


@dataclasses.dataclass(frozen=True)
class EncodeConfig:
    """What to encode and how; ``run.out`` is the layer store (local path or TensorStore kvstore URL)."""

    run: RunOptions = RunOptions()
    model: str | None = option(
        None,
        "hub id or folder of any family (BUILD.md#models, docs/models.md): Whisper (HF, CTranslate2 or OpenAI .pt); "
        "wav2vec2, XLS-R, HuBERT, MMS, Omnilingual; w2v-BERT 2.0, SeamlessM4T v2; OWSM, POWSM; the audio towers "
        "of Qwen2-Audio, Qwen3-ASR, Qwen-Omni, Voxtral (Realtime), Audio Flamingo 3, Gemma (USM); Parakeet, "
        "Canary, Cohere ASR. Default: the packaged whisper-base. `random-model --help`: random ones, offline",
    )
    adapter: str | None = option(
        None, "MMS language adapter to load beside a wav2vec2 model (its adapter.<lang>.safetensors)"
    )
    tower_output: str = option(
        "layers", "what the store holds, for a speech LLM (Qwen2-Audio, Voxtral, Audio Flamingo 3): layers (every "
        "block, 50/s), final (the tower's output: pooled and normed, 25/s, Voxtral 50/s) or projector (what the LLM "
        "reads: 25/s, Voxtral 12.5/s); other families store layers", choices=("layers", "final", "projector"),
    )  # fmt: skip
    dataset: str = option(
        "demo",
        "demo | fleurs | fleurs:/local/copy | manifest:/file.jsonl|csv | folder:/dir (<dir>/<lang>/<id>.<ext>, any "
        "format libsndfile reads; or a flat folder with --lang) | hf:<hub id or local path>[:config[,config]] (a "
        "datasets dataset: save_to_disk folder, Parquet, Hub; --*_column) | covost2:/dir[:<src>_<tgt>] | mass:/dir "
        "(BUILD.md#datasets)",
        reads=dataset_locations,
    )
    lang: str | None = option(
        None, "the language of a flat folder dataset (folder:/dir with the audio files in it) or a one-language hf:"
    )
    audio_column: str | None = option(None, "hf: the audio column (an Audio feature, bytes or paths; default audio)")
    text_column: str | None = option(
        None, "hf: the transcription column (default: the first of transcription, sentence, text, normalized_text)"
    )
    id_column: str | None = option(
        None, "hf: the parallel id column: equal ids across languages are translations (default: id, else row number)"
    )
    lang_column: str | None = option(
        None, "hf: the language column (default: each config is one language, hf:ID:en,de; or --lang)"
    )
    langs: tuple[str, ...] | None = option(
        None, "comma-separated language codes of the dataset, or 'all'", parse="list"
    )
    split: str = option("test", "dataset split (FLEURS: train, validation, test)")
    layers: tuple[int, ...] | None = option(
        None, "encoder layers to store: 'all', a list '0,3,7' or ranges '1-4' (0 = stem)", parse="layers"
    )
    dtype: str = option("float32", "storage dtype", choices=STORAGE_DTYPES)
    compute_dtype: str = option("float32", "model dtype on the device", choices=DTYPES)
    batch_size: int = option(8, "windows (of at most 30 s) per encoder step over all local devices", minimum=1)
    long_audio: str = option("window", "audio over 30 s: consecutive windows, or cut", choices=LONG_AUDIO_MODES)
    max_seconds: float = option(
        MAX_SECONDS,
        "longest recording, in seconds, encoded whole (--long_audio window); longer ones are skipped, named in the "
        "store: a language's store pads every utterance to its longest, and an utterance's shard is written whole "
        "from host memory (a 2-hour recording through whisper-base took 23 GB)",
        minimum=1.0,
    )
    prefetch: int = option(4, "host threads decoding audio and computing log-mel ahead of the device", minimum=1)
    claim_utterances: int = option(16, "utterances per work unit the processes of a multi-host run claim", minimum=1)
    allow_unpaired: bool = option(
        False, "encode a multi-language dataset whose languages share no utterance id (nothing cross-lingual to pair)"
    )
    allow_silent: bool = option(
        False,
        "encode clips of digital silence (peak below -90 dBFS) instead of skipping them: their states carry no "
        "speech, but a study of silence or of the model's bias may want them",
    )
    allow_empty: bool = option(False, "run on a dataset that lists no utterance (an empty store) instead of refusing")

    def __post_init__(self):
        validate(self)
        if not self.run.out:
            raise ConfigError("encode needs an output store: run.out (--out)")
