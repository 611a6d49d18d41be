r"""Write a small random-weight model folder of any family, in the layout the hub gives, without the hub or torch.

    python -m jobs.random_model --kind parakeet --out /tmp/parakeet        # = babelgrid random-model --kind ...
    python -m jobs.random_model --kind qwen2-audio --out /tmp/q2a --layers 4 --width 640 --heads 10
    python -m jobs.random_model --kind whisper-turbo --out /tmp/turbo --seed 1 --force   # replace what it wrote

Then encode with it like any checkpoint: python -m jobs.encode --model /tmp/parakeet --out /tmp/parakeet-layers

    python -m jobs.random_model --kind owls --out /tmp/owls_random --series 3    # + 3 training steps (docs/dynamics.md)

Kinds (the hub model whose files each copies): whisper (openai/whisper-base), whisper-turbo (large-v3-turbo: 128 mels,
v3 ids, a 4-block decoder), wav2vec2 (facebook/wav2vec2-base-960h, CTC), hubert (facebook/hubert-large-ll60k), mms
(facebook/mms-1b-all, with --adapter files), omnilingual (aadel4/omniASR-CTC-300M-v2), w2v-bert
(facebook/w2v-bert-2.0), seamless (facebook/seamless-m4t-v2-large's speech encoder), owsm (espnet/owsm_v3.1_ebf_base),
powsm (espnet/powsm: phone tokens, a 20 s window), owls (espnet/owls_1B_180K: a transformer encoder), owsm-ctc
(espnet/owsm_ctc_v4_1B: no decoder, interior CTC heads, a prompt encoder), qwen2-audio, voxtral, audio-flamingo3 (the
speech LLMs' towers and projectors), qwen3-asr (Qwen/Qwen3-ASR-0.6B), qwen3-omni (Qwen/Qwen3-Omni-30B-A3B-Instruct's
audio tower), qwen2.5-omni (Qwen/Qwen2.5-Omni-7B's audio tower), gemma3n (google/gemma-3n-E2B-it's audio tower, USM),
gemma4 (google/gemma-4-E2B-it's audio tower, USM),
voxtral-realtime (mistralai/Voxtral-Mini-4B-Realtime-2602's audio tower and projector), parakeet
(nvidia/parakeet-ctc-0.6b), canary (nvidia/canary-1b-v2), cohere-asr (CohereLabs/cohere-transcribe-03-2026:
FastConformer encoder and its decoder).
Each folder holds config.json (OWSM: ESPnet's config.yaml and meta.yaml), the weights as safetensors, the feature
extractor's and the tokenizer's files where the family reads them, and random_model.json (what it was written as).
Random weights run every job end to end; they answer none of the questions a real model would (docs/models.md).
"""

from __future__ import annotations

import dataclasses

from absl import flags

from engine.errors import BabelgridError
from engine.runtime.options import ConfigError, option, validate
from jobs import common

# engine.models.random_folder.kinds(), named here so that --help and a misspelt kind load no JAX (a test keeps the
# two lists equal)
KINDS = ("whisper", "whisper-turbo", "wav2vec2", "hubert", "mms", "omnilingual", "w2v-bert", "seamless", "owsm",
         "powsm", "owls", "owsm-ctc", "qwen2-audio", "voxtral", "audio-flamingo3", "qwen3-asr", "qwen3-omni",
         "qwen2.5-omni", "gemma3n", "gemma4", "voxtral-realtime", "parakeet", "canary", "cohere-asr")  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RandomModelConfig:
    kind: str = option(help="the kind of model (the module docstring lists them)", choices=KINDS, required=True)
    out: str = option(help="the folder to write: new or empty (or, with --force, one random-model wrote)",
                      required=True)  # fmt: skip
    layers: int | None = option(None, "encoder blocks (and decoder blocks, where the kind has a decoder of its own "
                                "depth); default: the kind's (2)", positive=True)  # fmt: skip
    width: int | None = option(None, "width of every block (feed-forwards 4x); default: the kind's (64)", positive=True)
    heads: int | None = option(None, "attention heads (must divide --width); default: the kind's (4)", positive=True)
    seed: int = option(0, "seed of the random weights: the same seed, kind and sizes give the same weights")
    force: bool = option(False, "replace --out if random-model wrote it before (never any other folder)")
    series: int = option(0, "with --kind owls: also write this many training steps in DeepSpeed's layout beside --out "
                         "(<out>_intermediates/<k>/), from a random start to --out's weights (docs/dynamics.md)",
                         minimum=0)  # fmt: skip

    def __post_init__(self):
        validate(self)
        if self.series and self.kind != "owls":
            raise ConfigError(f"--series writes OWLS training steps: it needs --kind owls, not {self.kind}")


common.define_config_flags(RandomModelConfig, __name__, required=("kind", "out"))
# No RunOptions here (nothing is claimed or leased): --progress is a flag of its own, accepted as by every job
flags.DEFINE_boolean(
    "progress", None, common.NO_LONG_STAGES.format(job="random-model", why="it writes one small folder")
)


def main() -> int:
    from engine.models.random_folder import write_random_folder  # loads JAX: after the flags, so --help stays quick
    from engine.models.random_series import write_random_series  # lazy: as above

    config = common.config_from_flags(RandomModelConfig)
    sizes = dict(layers=config.layers, width=config.width, heads=config.heads, seed=config.seed, force=config.force)
    try:
        if config.series:
            written = write_random_series(config.out, config.series, **sizes)
        else:
            written = write_random_folder(config.kind, config.out, **sizes)
    except BabelgridError:
        raise
    except (ValueError, OSError) as e:  # sizes the kind cannot be built with, an --out it may not write
        raise ConfigError(str(e)) from None
    print(written.report())
    return 0


if __name__ == "__main__":
    common.run(main)
