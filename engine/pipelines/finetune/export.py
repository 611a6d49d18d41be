"""The finetune job's export check, run before training so that a run cannot fail at its very end (issue 25).

Export (``engine.models.whisper.checkpoints.export.export_hf``) needs the ``safetensors`` package, a writable
``OUT/model/``, the checkpoint's ``tokenizer.json`` when it has one (copied) and a ``generation_config`` built from the
model's tokenizer and alignment heads. ``check_export`` tries each of these, writing nothing but a probe file.
"""

from __future__ import annotations

import pathlib
import tempfile

from engine.models.whisper.checkpoints.export import generation_config
from engine.pipelines.finetune.data import FinetuneError

MODEL = "model"  # OUT/model: the exported Hugging Face folder


def check_export(whisper, out: pathlib.Path) -> None:
    """Raise ``FinetuneError`` naming what would make exporting ``whisper`` to ``out/model`` fail, and the fix."""
    skip = "or pass --noexport to train without exporting"
    try:
        import safetensors.numpy  # noqa: F401  (export writes model.safetensors with it)
    except ImportError as e:
        raise FinetuneError(f"exporting the model needs the safetensors package ({e}): pip install safetensors "
                            f"(a dependency of babelgrid; reinstall it), {skip}") from None  # fmt: skip
    folder = out / MODEL
    if folder.exists() and not folder.is_dir():
        raise FinetuneError(f"'{folder}' is a file, where the job exports the model: move it away, {skip}")
    probe_in = folder if folder.is_dir() else out
    try:
        with tempfile.TemporaryFile(dir=probe_in):
            pass
    except OSError as e:
        raise FinetuneError(f"cannot write the model to '{folder}': '{probe_in}' is not writable ({e}); make it "
                            f"writable, pass another --out, {skip}") from None  # fmt: skip
    tokenizer = whisper.checkpoint.tokenizer_file
    if tokenizer is not None and not pathlib.Path(tokenizer).is_file():
        raise FinetuneError(f"the model's tokenizer file '{tokenizer}', which export copies, is missing; restore "
                            f"the --model folder, {skip}")  # fmt: skip
    try:
        generation_config(whisper)
    except Exception as e:  # whatever the tokenizer or the checkpoint config lacks, it fails the same way at the end
        raise FinetuneError(f"the model cannot be exported: its generation config fails ({type(e).__name__}: "
                            f"{e}); pass a complete --model, {skip}") from e  # fmt: skip
