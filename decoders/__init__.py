"""padt.decoders: see the package docstring of each module."""

from padt._subpackage_guard import refuse_top_level_import

refuse_top_level_import(__name__, "decoders")

from .attention import flash_attn_available
from .config import PaDTDecoderConfig
from .layers import RMSNorm, RotaryPE
from .memory import (
    DecoderMemory,
    DecoderOutput,
    first_subpatch_pe,
    merge_block_token_rc,
    raster_token_rc,
)
from .official_names import from_official_state_dict, official_name_map, to_official_name
from .vrt_decoder import PaDTDecoder

__all__ = [
    "DecoderMemory",
    "DecoderOutput",
    "PaDTDecoder",
    "PaDTDecoderConfig",
    "RMSNorm",
    "RotaryPE",
    "first_subpatch_pe",
    "flash_attn_available",
    "from_official_state_dict",
    "merge_block_token_rc",
    "official_name_map",
    "raster_token_rc",
    "to_official_name",
]
