"""The neurons job's config (light: ``--help`` builds its flags without loading JAX)."""

from __future__ import annotations

import dataclasses

from engine.data.audio import LONG_AUDIO_MODES
from engine.errors import BabelgridError
from engine.runtime.options import RunOptions, option, validate


class NeuronsError(BabelgridError, ValueError):
    """The neurons job cannot run as asked: a family without feed-forward counts, bad options, a folder of others."""


@dataclasses.dataclass(frozen=True)
class NeuronsConfig:
    """Which model's feed-forward units to count, on which audio, and how to rank them (``engine.pipelines.neurons``).

    The dataset options are the encode job's (docs/datasets.md): ``dataset``, ``lang``, the ``*_column`` of hf:,
    ``langs``, ``split``.
    """

    run: RunOptions = RunOptions()
    model: str | None = option(
        None, "Whisper or wav2vec2-family model (hub id or folder, as encode's --model), default the packaged "
        "whisper-base",
    )  # fmt: skip
    adapter: str | None = option(None, "MMS language adapter to load beside a wav2vec2 model")
    dataset: str = option("demo", "as encode's --dataset: demo | fleurs | folder:/dir | manifest:... | hf:...")
    lang: str | None = option(None, "the language of a flat folder or one-language hf: dataset")
    audio_column: str | None = option(None, "hf: the audio column")
    text_column: str | None = option(None, "hf: the transcription column")
    id_column: str | None = option(None, "hf: the parallel id column")
    lang_column: str | None = option(None, "hf: the language column")
    langs: tuple[str, ...] | None = option(None, "comma-separated language codes of the dataset, or 'all'",
                                           parse="list")  # fmt: skip
    split: str = option("test", "dataset split")
    batch_size: int = option(8, "windows (of at most 30 s) per encoder step", minimum=1)
    long_audio: str = option("window", "audio over 30 s: consecutive windows, or cut", choices=LONG_AUDIO_MODES)
    prefetch: int = option(4, "host threads decoding audio ahead of the device", minimum=1)
    rate_quantile: float = option(
        0.95, "LAPE's activation threshold: this quantile of every unit's activation rate in every language",
        positive=True,
    )  # fmt: skip
    lape_share: float = option(0.01, "share of all units selected as language-specific: the lowest LAPE", positive=True)
    top: int = option(20, "units listed per language and layer in selective_units.csv", minimum=1)
    intervene: tuple[str, ...] | None = option(
        None, "languages whose selected units are switched off (set to zero), one re-encoding each, then the change "
        "in language ID and retrieval is measured; 'all': every language that owns a unit; default none",
        parse="names",
    )  # fmt: skip
    intervene_utterances: int = option(
        50, "utterances per language (the first, in the dataset's order) re-encoded for the intervention", minimum=1
    )  # fmt: skip
    random_draws: int = option(
        9, "random controls per language switched off: each switches off as many units drawn at random (per layer, "
        "among the unselected) and costs one re-encoding; their effects are the null the selected units are tested "
        "against (p >= 1/(draws+1): 9 gives 0.1, 19 gives 0.05); 0: none",
        minimum=0,
    )  # fmt: skip
    seed: int = option(0, "seed of the random control's units and of the language-ID probe's folds")

    def __post_init__(self):
        validate(self)
        if not self.run.out:
            raise NeuronsError("neurons needs an output folder: run.out (--out)")
        for name in ("rate_quantile", "lape_share"):
            if not 0 < getattr(self, name) < 1:
                raise NeuronsError(f"{name} is a share in (0, 1), got {getattr(self, name)}")
