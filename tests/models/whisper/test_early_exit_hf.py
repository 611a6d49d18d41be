"""Early exit against an independent reference: greedy tokens from an intermediate encoder layer equal Hugging Face
transformers' PyTorch ``generate`` handed the same layer as ``encoder_outputs``.

The layer's states come from HF's own encoder (``hidden_states[k]``; the raw output of the last block, which HF
reports only after its final norm, from a forward hook), with HF's ``encoder.layer_norm`` (Whisper's ln_post) applied
or not. Ours decodes from the mel with ``DecodingOptions(encoder_layer=k, apply_ln_post=...)``, so the encoder up to k,
the optional ln_post and the cached decoder are all ours. Suppression is off on both sides (plain argmax), and HF
runs ``GenerationMixin.generate`` (the generic greedy search), not Whisper's wrapper with its own prompt handling.

- tiny random model (``tiny_model_dir``): layers 1 and 2 (= L) of 2 blocks, ln_post on and off, 3 random windows;
- real weights (the packaged whisper-base converted to HF names): layers 2 and 4, ln_post on and off, 2 FLEURS clips.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from transformers.modeling_outputs import BaseModelOutput  # noqa: E402

from engine.models.whisper.decoding import DecodingOptions  # noqa: E402
from tests.models.whisper.hf_reference import hf_encoder_layers  # noqa: E402

N_NEW = 12


def hf_layer(hf, hf_layers: list[np.ndarray], layer: int, ln_post: bool) -> torch.Tensor:
    """Encoder layer ``layer`` (babelgrid indexing, 1..L) of HF's own encoder (``hf_layers``, from
    ``hf_encoder_layers``), with HF's final norm or not."""
    states = torch.from_numpy(hf_layers[layer])
    with torch.no_grad():
        return hf.model.encoder.layer_norm(states) if ln_post else states


def hf_generate(hf, enc: torch.Tensor, prompt: np.ndarray, eot: int) -> list[list[int]]:
    with torch.no_grad():
        out = transformers.GenerationMixin.generate(
            hf,
            encoder_outputs=BaseModelOutput(last_hidden_state=enc),
            decoder_input_ids=torch.from_numpy(prompt),
            max_new_tokens=N_NEW,
            do_sample=False,
            num_beams=1,
            eos_token_id=eot,
            pad_token_id=eot,
            decoder_start_token_id=int(prompt[0, 0]),
            suppress_tokens=None,
            begin_suppress_tokens=None,
            forced_decoder_ids=None,
        )
    tokens = []
    for row in out[:, prompt.shape[1] :].tolist():
        tokens.append(row[: row.index(eot)] if eot in row else row)
    return tokens


def check_early_exit(whisper, hf, mel, layers, language, variants=None, hf_layers=None):
    """Greedy tokens from each of ``layers`` with and without ln_post (or the (layer, ln_post) pairs ``variants``)
    equal transformers' ``generate`` handed the same layer of its own encoder (``hf_layers``: ``hf_encoder_layers(hf,
    mel)`` when the caller has it already)."""
    tok = whisper.tokenizer
    prompt = np.array([tok.sot_sequence(language, "transcribe")] * len(mel), np.int64)
    compared = 0
    if hf_layers is None:
        hf_layers = hf_encoder_layers(hf, mel)  # one HF encoder pass serves every (layer, ln_post)
    assert all(len(h) == len(mel) for h in hf_layers)
    variants = variants or [(layer, ln_post) for layer in layers for ln_post in (True, False)]
    for layer, ln_post in variants:
        options = DecodingOptions(
            language=language,
            encoder_layer=layer,
            apply_ln_post=ln_post,
            suppress_tokens=(),
            suppress_blank=False,
            max_new_tokens=N_NEW,
        )
        ours = whisper.transcribe(mel, options).tokens
        ref = hf_generate(hf, hf_layer(hf, hf_layers, layer, ln_post), prompt, tok.eot)
        assert ours == ref, (layer, ln_post)
        compared += sum(len(t) for t in ref)
    assert compared > len(variants) * len(mel) * 2, "the references stopped at once: the comparison would prove little"


def test_early_exit_matches_hf_generate_tiny(tiny_model_dir, tiny_whisper):
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(tiny_model_dir, attn_implementation="eager")
    mel = np.random.default_rng(1).standard_normal((3, 80, 3000)).astype(np.float32)
    check_early_exit(tiny_whisper, hf.eval(), mel, (1, 2), "de")


@pytest.mark.realdata
@pytest.mark.slow
def test_early_exit_matches_hf_generate_real_weights(base_whisper, fleurs_windows):
    from engine.models.whisper.checkpoints.export import hf_config, hf_state_dict
    from engine.models.whisper.checkpoints.load import load_checkpoint

    ckpt = load_checkpoint(None)
    d = ckpt.dims
    cfg = transformers.WhisperConfig(**hf_config(d), attn_implementation="eager")
    hf = transformers.WhisperForConditionalGeneration(cfg).eval()
    sd = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in hf_state_dict(ckpt.state_dict).items()}
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and set(missing) <= {"proj_out.weight"}, (missing, unexpected)
    fw = fleurs_windows
    first = [fw.windows_of(fw.names.index(name))[0] for name in ("fleurs-de-000", "fleurs-de-001")]
    check_early_exit(base_whisper, hf, fw.mel[first], (2, 4), "de")
