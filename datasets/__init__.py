"""padt.datasets: see the package docstring of each module."""
from padt._lazy import lazy_exports, refuse_top_level_import

refuse_top_level_import(__name__, "datasets")

# The public names load on first use (PEP 562): the converters import padt.vision.images and with it transformers,
# which ``padt convert --help`` (padt.cli.convert) should not pay for.
__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".coco": ("convert_coco",),
        ".patches": ("DEFAULT_MIN_COVERAGE", "coverage_grid", "sample_vrt_patches", "select_patches"),
        # Absolute (no leading dot): the mask/RLE helpers live in padt.vision, these names are kept for callers.
        "padt.vision.masks": (
            "box_to_mask", "box_to_rle", "mask_to_rle", "polygons_to_rle", "rle_to_mask", "segmentation_to_rle",
        ),
        ".records": ("GridSpec", "GroundingObject", "GroundingRecord", "RecordError", "read_jsonl", "write_jsonl"),
        ".refcoco": ("Overlap", "convert_refcoco", "drop_overlap", "find_overlap", "load_refs"),
        ".ric": ("convert_ric",),
        ".summary": ("ConversionSummary",),
        ".synthetic": ("SyntheticDataset", "generate_synthetic"),
    },
)
