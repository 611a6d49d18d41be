"""The finetune job's export check, run before training so that a run cannot fail at its very end (issue 25).

Export (``Trainer.export``) needs a writable ``OUT/model/`` and what the model's family needs to write its layout
(Whisper's: the ``safetensors`` package, the checkpoint's ``tokenizer.json`` when it has one, a generation config built
from the model's tokenizer and alignment heads: ``Trainer.export_problem``). ``check_export`` tries each of these,
writing nothing but a probe file.
"""

from __future__ import annotations

import pathlib
import tempfile

from engine.pipelines.finetune.data import FinetuneError

MODEL = "model"  # OUT/model: the exported model, in the layout its family's loader reads


def check_export(trainer, out: pathlib.Path) -> None:
    """Raise ``FinetuneError`` naming what would make exporting ``trainer``'s model to ``out/model`` fail, and the
    fix."""
    skip = "or pass --noexport to train without exporting"
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
    problem = trainer.export_problem()
    if problem is not None:
        raise FinetuneError(f"{problem}, {skip}")
