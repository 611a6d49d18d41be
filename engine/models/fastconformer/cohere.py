"""Cohere ASR (``CohereLabs/cohere-transcribe-03-2026``, transformers' ``cohere_asr``) in the FastConformer family:
what differs from Canary, and nothing else (issue 83).

Encoder: transformers' ``ParakeetEncoder`` (``encoder_config``) at ``CohereAsrConfig``'s sizes: 48 blocks x 1280, 8
heads of 160, feed-forward 5120, depthwise kernel 9, 8x subsampling by three 3x3 stride-2 convolutions of 256
channels, 128 mel bins, no input scale. transformers merges a given ``encoder_config`` into those defaults, so a
missing field takes Cohere's, not Parakeet's (``config.config_from_hf``).

Decoder: Canary's Transformer decoder (``decoder.CanaryDecoder``) with three differences: its sizes sit at the top level
of ``config.json`` (``CohereAsrConfig``: 8 layers x 1024, 8 heads, feed-forward 4096 with ReLU, 16384 tokens, 1024
positions, ``proj_out`` untied); the positions are a stored table (``model.decoder.pos_emb``, an ``nn.Embedding``,
trained) rather than NeMo's formula; and a linear ``model.decoder.proj`` maps the encoder's 1280-wide states to the
decoder's 1024 before every cross-attention reads them.

Names: ``save_pretrained`` writes Cohere ASR's tensors under the original NeMo names (transformers'
``conversion_mapping`` for ``cohere_asr``, reverted on save: ``model.encoder.pre_encode.conv.0.weight``,
``model.transf_decoder._decoder.layers.0.first_sub_layer.query_net.weight``, ``log_softmax.mlp.layer0.weight``).
``hf_name`` maps those names to transformers' module names (``model.encoder.subsampling.layers.0.weight``, ...),
which the family's readers use; names already in that form pass unchanged, so both layouts load.

Prompt (``PROMPT``): ``CohereAsrProcessor.get_decoder_prompt_ids(language, punctuation)``: a leading ``▁``, then
Canary's control tokens with the language twice; ``generate`` puts the decoder start token before it when it does not
begin with it (``decoder_start_token_id``, else ``bos_token_id``: ``<|startoftranscript|>`` with
``CohereAsrConfig``'s defaults), so babelgrid's prompt is what ``generate`` feeds. The model only transcribes: there
is no translation prompt.
"""

from __future__ import annotations

import re

COHERE = "cohere_asr"
HUB_ID = "CohereLabs/cohere-transcribe-03-2026"
HUB_NAMES = r"cohere-transcribe|cohere[-_]asr"
# CohereAsrProcessor's LANGUAGES: the codes of the tokenizer's <|xx|> tokens the model was trained on
LANGUAGES = ("ar", "de", "el", "en", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "vi", "zh")
PROMPT = ("\u2581", "<|startofcontext|>", "<|startoftranscript|>", "<|emo:undefined|>", "{source}", "{target}",
          "{pnc}", "<|noitn|>", "<|notimestamp|>", "<|nodiarize|>")  # fmt: skip

# CohereAsrConfig's sub_configs_defaults for encoder_config, the fields the family reads.
ENCODER_DEFAULTS = dict(
    hidden_size=1280, num_hidden_layers=48, num_attention_heads=8, intermediate_size=5120, hidden_act="silu",
    attention_bias=True, convolution_bias=True, conv_kernel_size=9, subsampling_factor=8,
    subsampling_conv_channels=256, num_mel_bins=128, subsampling_conv_kernel_size=3, subsampling_conv_stride=2,
    scale_input=False,
)  # fmt: skip
# CohereAsrConfig's decoder fields (top level of config.json) and their defaults.
DECODER_DEFAULTS = dict(vocab_size=16384, hidden_size=1024, intermediate_size=4096, num_hidden_layers=8,
                        num_attention_heads=8, num_key_value_heads=None, hidden_act="relu",
                        max_position_embeddings=1024, attention_bias=True, head_dim=None)  # fmt: skip
IDS = dict(pad_token_id=2, eos_token_id=3, bos_token_id=4, tie_word_embeddings=False)

# transformers' conversion_mapping["cohere_asr"]: the stored (NeMo) name -> transformers' name, applied in order.
_RENAMES = tuple((re.compile(a), b) for a, b in (
    (r"encoder\.pre_encode\.conv\.", "encoder.subsampling.layers."),
    (r"encoder\.pre_encode\.out\.", "encoder.subsampling.linear."),
    (r"transf_decoder\._embedding\.position_embedding\.pos_enc", "decoder.pos_emb.weight"),
    (r"transf_decoder\._embedding\.token_embedding", "decoder.embed_tokens"),
    (r"transf_decoder\._embedding\.layer_norm", "decoder.embedding_layernorm"),
    (r"transf_decoder\._decoder\.final_layer_norm", "decoder.norm"),
    (r"transf_decoder\._decoder\.layers", "decoder.layers"),
    (r"encoder_decoder_proj\.", "decoder.proj."),
    (r"encoder\.(.+)\.self_attn\.linear_q", r"encoder.\1.self_attn.q_proj"),
    (r"encoder\.(.+)\.self_attn\.linear_k", r"encoder.\1.self_attn.k_proj"),
    (r"encoder\.(.+)\.self_attn\.linear_v", r"encoder.\1.self_attn.v_proj"),
    (r"encoder\.(.+)\.self_attn\.linear_out", r"encoder.\1.self_attn.o_proj"),
    (r"encoder\.(.+)\.self_attn\.linear_pos", r"encoder.\1.self_attn.relative_k_proj"),
    (r"encoder\.(.+)\.self_attn\.pos_bias_u", r"encoder.\1.self_attn.bias_u"),
    (r"encoder\.(.+)\.self_attn\.pos_bias_v", r"encoder.\1.self_attn.bias_v"),
    (r"decoder\.(.+)\.first_sub_layer\.query_net", r"decoder.\1.self_attn.q_proj"),
    (r"decoder\.(.+)\.first_sub_layer\.key_net", r"decoder.\1.self_attn.k_proj"),
    (r"decoder\.(.+)\.first_sub_layer\.value_net", r"decoder.\1.self_attn.v_proj"),
    (r"decoder\.(.+)\.first_sub_layer\.out_projection", r"decoder.\1.self_attn.o_proj"),
    (r"\.second_sub_layer\.query_net", ".encoder_attn.q_proj"),
    (r"\.second_sub_layer\.key_net", ".encoder_attn.k_proj"),
    (r"\.second_sub_layer\.value_net", ".encoder_attn.v_proj"),
    (r"\.second_sub_layer\.out_projection", ".encoder_attn.o_proj"),
    (r"\.third_sub_layer\.dense_in", ".mlp.fc1"),
    (r"\.third_sub_layer\.dense_out", ".mlp.fc2"),
    (r"\.layer_norm_1\.", ".input_layernorm."),
    (r"\.layer_norm_2\.", ".post_attention_layernorm."),
    (r"\.layer_norm_3\.", ".final_layernorm."),
    (r"\.conv\.batch_norm", ".conv.norm"),
    (r"log_softmax\.mlp\.layer0", "proj_out"),
))  # fmt: skip
# The prefixes of the stored decoder's tensors, in either layout.
DECODER_PREFIXES = ("model.transf_decoder.", "model.encoder_decoder_proj.", "log_softmax.", "model.decoder.",
                    "proj_out.")  # fmt: skip
# transformers' name -> the stored one, for the tensors whose names change (the inverse of _RENAMES, written out).
_STORED = tuple((re.compile(a), b) for a, b in (
    (r"encoder\.subsampling\.layers\.", "encoder.pre_encode.conv."),
    (r"encoder\.subsampling\.linear\.", "encoder.pre_encode.out."),
    (r"decoder\.pos_emb\.weight", "transf_decoder._embedding.position_embedding.pos_enc"),
    (r"decoder\.embed_tokens", "transf_decoder._embedding.token_embedding"),
    (r"decoder\.embedding_layernorm", "transf_decoder._embedding.layer_norm"),
    (r"decoder\.norm\.", "transf_decoder._decoder.final_layer_norm."),
    (r"decoder\.proj\.", "encoder_decoder_proj."),
    (r"decoder\.layers", "transf_decoder._decoder.layers"),
    (r"self_attn\.q_proj", "self_attn.linear_q"),
    (r"self_attn\.k_proj", "self_attn.linear_k"),
    (r"self_attn\.v_proj", "self_attn.linear_v"),
    (r"self_attn\.o_proj", "self_attn.linear_out"),
    (r"self_attn\.relative_k_proj", "self_attn.linear_pos"),
    (r"self_attn\.bias_([uv])$", r"self_attn.pos_bias_\1"),
    (r"\.conv\.norm\.", ".conv.batch_norm."),
    (r"encoder_attn\.q_proj", "second_sub_layer.query_net"),
    (r"encoder_attn\.k_proj", "second_sub_layer.key_net"),
    (r"encoder_attn\.v_proj", "second_sub_layer.value_net"),
    (r"encoder_attn\.o_proj", "second_sub_layer.out_projection"),
    (r"\.mlp\.fc1", ".third_sub_layer.dense_in"),
    (r"\.mlp\.fc2", ".third_sub_layer.dense_out"),
    (r"\.input_layernorm\.", ".layer_norm_1."),
    (r"\.post_attention_layernorm\.", ".layer_norm_2."),
    (r"\.final_layernorm\.", ".layer_norm_3."),
    (r"^proj_out", "log_softmax.mlp.layer0"),
))  # fmt: skip
_DECODER_SELF = re.compile(r"(transf_decoder\._decoder\.layers\.\d+)\.self_attn\.linear_(q|k|v|out)")
_SELF_NET = {"q": "query_net", "k": "key_net", "v": "value_net", "out": "out_projection"}


def hf_name(name: str) -> str:
    """transformers' name of a stored Cohere ASR tensor (``save_pretrained``'s NeMo name, or transformers' own)."""
    for pattern, replacement in _RENAMES:
        name = pattern.sub(replacement, name)
    return name


def stored_name(name: str) -> str:
    """The name ``save_pretrained`` stores transformers' tensor ``name`` under (``hf_name``'s inverse)."""
    for pattern, replacement in _STORED:
        name = pattern.sub(replacement, name)
    # the decoder's self-attention went through the encoder's rule above: its NeMo names are first_sub_layer's
    return _DECODER_SELF.sub(lambda m: f"{m.group(1)}.first_sub_layer.{_SELF_NET[m.group(2)]}", name)
