"""The ``config.json`` of the released PaDT checkpoints, as data: what a released folder holds, for tests that
write tiny folders in that layout and for benchmarks that build models of the released shapes.

PaDT_Pro_3B: Qwen2.5-VL-3B-Instruct as transformers 4.50 saves it, plus what the official trainer adds
(``vl_decoder``, ``use_visual_prototype_projection``); PaDT_Pro_7B: Qwen2.5-VL-7B-Instruct (wider, 28 layers,
152,064 rows, untied ``lm_head``) with the same vision tower. :func:`padt.official.checkpoint.translate_config`
turns either into a :class:`~padt.PaDTConfig`. See ``docs/official_checkpoints.md``.
"""

from __future__ import annotations

#: The vision tower of Qwen2.5-VL-3B (and 7B, whose merger projects to 3584 instead of 2048).
QWEN2_5_VL_3B_VISION = {
    "model_type": "qwen2_5_vl", "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
    "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14, "spatial_merge_size": 2,
    "spatial_patch_size": 14, "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
    "tokens_per_second": 2, "torch_dtype": "bfloat16",
}
#: PaDT-MLLM/PaDT_Pro_3B's config.json.
PADT_PRO_3B = {
    "architectures": ["PaDTForConditionalGeneration"], "model_type": "qwen2_5_vl", "transformers_version": "4.50.0",
    "torch_dtype": "bfloat16", "attention_dropout": 0.0, "hidden_act": "silu", "initializer_range": 0.02,
    "bos_token_id": 151643, "eos_token_id": 151645, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
    "vision_token_id": 151654, "image_token_id": 151655, "video_token_id": 151656,
    "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
    "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 128000, "max_window_layers": 70,
    "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": False,
    "use_cache": True, "tie_word_embeddings": True,
    "rope_scaling": {"type": "default", "mrope_section": [16, 24, 24], "rope_type": "default"},
    "vision_config": QWEN2_5_VL_3B_VISION,
    "vl_decoder": {
        "name": "PaDTDecoder", "attn_implementation": "flash_attention_2", "hidden_size": 1280,
        "intermediate_size": 3420, "llm_hidden_state": 2048, "num_heads": 16, "spatial_merge_size": 2,
        "use_mask_loss": True,
    },
    "use_visual_prototype_projection": True,
}
#: PaDT-MLLM/PaDT_Pro_7B's config.json.
PADT_PRO_7B = {
    **PADT_PRO_3B,
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "max_window_layers": 28, "tie_word_embeddings": False,
    "vision_config": {**QWEN2_5_VL_3B_VISION, "out_hidden_size": 3584},
    "vl_decoder": {**PADT_PRO_3B["vl_decoder"], "llm_hidden_state": 3584},
}
