"""An offline training series: DeepSpeed-layout steps of a small random OWLS, interpolating between two random
folders, so that a series can be built, encoded and analysed where no OWLS weights can be downloaded
(``babelgrid random-model --kind owls --series N``; tests and docs/dynamics.md's demo).

    from engine.models.random_series import write_random_series
    written = write_random_series("/tmp/owls_random", 3)   # the final model; its steps beside it
    # /tmp/owls_random (a random OWLS folder, seed 1), /tmp/owls_random_intermediates/{1,2,3}/mp_rank_00_model_states.pt
    # python -m jobs.encode --model /tmp/owls_random_intermediates@step=2 --out /tmp/s2

Step k of N holds ``(1 - k/N) * start + (k/N) * final`` for every tensor, in float32: ``start`` a random OWLS of
seed ``seed`` (written to a temporary folder and deleted), ``final`` the same sizes at seed ``seed + 1``, which stays
as the final model (``out``). Step N is therefore the final model's weights exactly (``0 * start + 1 * final``), and
its layers and CKA with the final model's are exactly those of one model with itself. The steps' files are what
``engine.models.owsm.intermediates`` reads: DeepSpeed's dict with the ``module`` state dict (ESPnet's names, the
safetensors file's) and a little of its bookkeeping (``global_steps``), written with ``torch.save`` (torch is needed
to write them, as to read them).

What it can show: that a series runs end to end (a store per step, the series tables and figures) and that the
measures move smoothly between two endpoints; CKA with the final model rises to exactly 1 at the last step.
What it cannot show: anything about training. The path is a straight line between two random networks, not an
optimiser's; neither endpoint has learnt language, so R@1, LID and the meeting layer only reflect random features of
the audio (lengths, energy) and move without meaning.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import tempfile

import numpy as np

from engine.models.common.deepspeed import MODEL_STATES
from engine.models.common.weights import read_safetensors
from engine.models.random_folder import MARKER, write_random_folder

KIND = "owls"  # the random-model kind whose family reads training steps (engine.models.owsm.intermediates)
SUFFIX = "_intermediates"  # the steps' folder: the final model's name with this suffix, beside it
SERIES_MARKER = "random_series.json"  # what the steps' folder was written as


@dataclasses.dataclass(frozen=True)
class WrittenSeries:
    final: pathlib.Path
    steps_folder: pathlib.Path
    steps: tuple[int, ...]

    def model(self, step: int) -> str:
        """The ``--model`` of one step."""
        return f"{self.steps_folder}@step={step}"

    def report(self) -> str:
        n, first = len(self.steps), self.steps[0]
        return "\n".join([
            f"wrote a random OWLS training series: the final model {self.final}, steps "
            f"{', '.join(map(str, self.steps))} in {self.steps_folder} (step k of {n}: (1 - k/{n}) x a random start "
            f"+ k/{n} x the final model; the last step is the final model's weights)",
            f"next: python -m jobs.encode --model {self.model(first)} --out {self.steps_folder}-{first}",
        ])  # fmt: skip


def _weights(folder: pathlib.Path) -> dict[str, np.ndarray]:
    return read_safetensors(next(folder.rglob("*.safetensors")))


def write_random_series(
    out, steps: int, *, layers: int | None = None, width: int | None = None, heads: int | None = None, seed: int = 0,
    force: bool = False,
) -> WrittenSeries:  # fmt: skip
    """The final model at ``out`` and ``steps`` steps in ``<out>_intermediates`` (the module docstring)."""
    import torch  # lazy: only the steps' files need it, as their reader does

    if steps < 1:
        raise ValueError(f"a series needs 1 or more steps, got {steps}")
    final = pathlib.Path(out).expanduser().absolute()
    folder = final.with_name(final.name + SUFFIX)
    if folder.exists() and any(folder.iterdir()) and not (force and (folder / SERIES_MARKER).is_file()):
        raise FileExistsError(f"{str(folder)!r} is not empty; give another --out, or --force to replace a series "
                              "random-model wrote")  # fmt: skip
    sizes = dict(layers=layers, width=width, heads=heads)
    write_random_folder(KIND, final, seed=seed + 1, force=force, **sizes)
    end = _weights(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".series-start.", dir=final.parent) as tmp:
        start = _weights(write_random_folder(KIND, pathlib.Path(tmp) / "start", seed=seed, **sizes).folder)
        start = {k: np.array(v, np.float32) for k, v in start.items()}
    if folder.exists():
        shutil.rmtree(folder)
    for k in range(1, steps + 1):
        t = np.float32(k / steps)
        module = {name: torch.from_numpy(((1 - t) * start[name] + t * np.asarray(b, np.float32)).astype(np.float32))
                  for name, b in end.items()}  # fmt: skip
        path = folder / str(k) / MODEL_STATES
        path.parent.mkdir(parents=True)
        torch.save({"module": module, "global_steps": k, "ds_version": "babelgrid random series"}, path)
    record = {"written_by": "babelgrid random-model --series", "final": final.name, "steps": steps, "seed": seed,
              "start_seed": seed, "final_seed": seed + 1, "final_marker": MARKER}  # fmt: skip
    (folder / SERIES_MARKER).write_text(json.dumps(record, indent=1) + "\n")
    return WrittenSeries(final, folder, tuple(range(1, steps + 1)))
