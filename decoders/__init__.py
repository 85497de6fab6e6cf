"""padt.decoders: the PaDT decoder (VRT states -> box, score, mask) and its attention backends."""

from padt._lazy import lazy_exports, refuse_top_level_import

refuse_top_level_import(__name__, "decoders")

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".attention": ("flash_attn_available",),
        ".config": ("PaDTDecoderConfig",),
        ".layer_pooling": ("LayerAttentionPooling",),
        ".layers": ("RMSNorm", "RotaryPE"),
        ".memory": ("DecoderMemory", "DecoderOutput", "first_subpatch_pe"),
        ".official_names": ("from_official_state_dict", "official_name_map", "to_official_name"),
        ".vrt_decoder": ("PaDTDecoder",),
    },
)
