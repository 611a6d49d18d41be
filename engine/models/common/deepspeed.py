"""The weights of a DeepSpeed training checkpoint (``<tag>/mp_rank_00_model_states.pt``), read without unpickling
anything but tensors and plain containers.

DeepSpeed's ``save_checkpoint`` writes, with ``torch.save``, one dict per model-parallel rank: ``module`` (the model's
state dict, the only entry read here) beside its bookkeeping (``buffer_names``, ``param_shapes`` of ``torch.Size``,
``lr_scheduler``, ``global_steps``, ``ds_config``, ``ds_version``, ...) and the trainer's ``client_state``. ESPnet's
``DeepSpeedTrainer`` puts its ``Reporter``'s state there, whose statistics ESPnet before 202611 kept as NumPy scalars
and ``datetime.timedelta`` (ESPnet 202611's ``Reporter.state_dict`` converts them, naming ``weights_only`` as the
reason); those globals are all ``torch.load(weights_only=True)`` refuses in such a file.

The read (``read_model_states``):

1. the pickle's globals are listed without unpickling it (torch's ``get_unsafe_globals_in_checkpoint``, a static
   disassembly); a global outside torch's ``weights_only`` set and ``BOOKKEEPING`` refuses the file in one line
   naming the file and the global: a pickle that names ``os.system`` or ``builtins.eval`` runs nothing;
2. ``torch.load(weights_only=True)``, with each ``BOOKKEEPING`` global standing for ``Unread``, an inert placeholder
   that takes any arguments and state and runs no code (NumPy and ``datetime`` are never called): the rest is torch's
   own restricted unpickler;
3. ``module`` must be a mapping of names to tensors, returned as NumPy arrays (``io.to_numpy``: bfloat16 stays
   bfloat16).
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Mapping

import numpy as np

from engine.errors import CheckpointError
from engine.models.common.io import to_numpy, torch_load

MODEL_STATES = "mp_rank_00_model_states.pt"  # DeepSpeed's file of rank 0's module (no model parallelism)
# Globals of the trainer's bookkeeping, read as ``Unread``: NumPy scalars and their dtypes (numpy 1 and 2 module
# paths), and timedelta (ESPnet's Reporter statistics before 202611).
BOOKKEEPING = re.compile(r"numpy\.(_core|core)\.multiarray\.scalar|numpy\.dtype|numpy\.dtypes\.\w+|datetime\.timedelta")


class Unread:
    """What a ``BOOKKEEPING`` global reads as: its arguments and state kept as given, nothing called."""

    def __new__(cls, *args, **kwargs):
        out = super().__new__(cls)
        out.args = args
        return out

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


def read_model_states(path: pathlib.Path) -> dict[str, np.ndarray]:
    """The ``module`` state dict of a DeepSpeed ``mp_rank_00_model_states.pt``, as NumPy arrays (module docstring)."""
    import torch  # lazy: only a training step needs it (io.torch_load says how to install it where it is missing)

    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:  # a damaged or truncated file, or not a torch.save zip
        raise CheckpointError(
            f"'{path}' is not a readable PyTorch file ({type(e).__name__}: {e}); download it again"
        ) from None
    foreign = sorted(g for g in found if not BOOKKEEPING.fullmatch(g))
    if foreign:
        raise CheckpointError(
            f"'{path}' holds {', '.join(foreign)}, which is neither a tensor nor a plain container nor DeepSpeed's or "
            "ESPnet's bookkeeping; babelgrid does not unpickle it (a pickle can run code as it loads)"
        )
    with torch.serialization.safe_globals([(Unread, g) for g in found]):
        obj = torch_load(path)
    module = obj.get("module") if isinstance(obj, Mapping) else None
    if not isinstance(module, Mapping):
        keys = ", ".join(sorted(map(str, obj))[:8]) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(
            f"'{path}' has no 'module' state dict ({keys}); is it DeepSpeed's {MODEL_STATES} of a training checkpoint?"
        )
    bad = sorted(str(k) for k, v in module.items() if not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"'{path}': module's {', '.join(bad[:4])} are not tensors; it is not a state dict")
    return {str(k): to_numpy(v) for k, v in module.items()}
