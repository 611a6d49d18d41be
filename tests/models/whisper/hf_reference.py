"""Hugging Face Whisper's own encoder states in babelgrid's layer indexing, for the tests that compare against it.

Import it only after ``pytest.importorskip("torch")``: torch is a test-only reference.
"""

import numpy as np
import torch


def hf_encoder_layers(hf, mel: np.ndarray) -> list[np.ndarray]:
    """``f32[batch, frames, width]`` for layers 0..L+1 of ``hf`` (a ``WhisperForConditionalGeneration``) on ``mel``
    (``f32[batch, n_mels, frames]``): the stem, each block, the last block raw (HF reports it only after its final
    norm, so a forward hook takes it) and after ln_post."""
    captured = {}
    hook = hf.model.encoder.layers[-1].register_forward_hook(
        lambda mod, inp, out: captured.__setitem__("last", out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.no_grad():
            out = hf.model.encoder(torch.from_numpy(mel), output_hidden_states=True)
    finally:
        hook.remove()
    hidden = [h.numpy() for h in out.hidden_states]
    assert len(hidden) == len(hf.model.encoder.layers) + 1
    return hidden[:-1] + [captured["last"].numpy(), out.last_hidden_state.numpy()]
