"""padt.datasets: see the package docstring of each module."""
from padt._subpackage_guard import refuse_top_level_import

refuse_top_level_import(__name__, "datasets")

# The public names load on first use (PEP 562): the converters import padt.imaging and with it transformers,
# which ``padt convert --help`` (padt.datasets.convert_cli) should not pay for.
import importlib  # noqa: E402
from typing import Any  # noqa: E402

_EXPORTS = {
    "padt.datasets.coco": ("convert_coco", "ovd_answer_template", "ovd_prompt"),
    "padt.datasets.patches": (
        "DEFAULT_MIN_COVERAGE",
        "box_to_rle",
        "coverage_grid",
        "mask_to_rle",
        "polygons_to_rle",
        "rle_to_mask",
        "sample_vrt_patches",
        "segmentation_to_rle",
        "select_patches",
    ),
    "padt.datasets.records": (
        "GridSpec",
        "GroundingObject",
        "GroundingRecord",
        "RecordError",
        "read_jsonl",
        "write_jsonl",
    ),
    "padt.datasets.refcoco": ("Overlap", "convert_refcoco", "drop_overlap", "find_overlap", "load_refs"),
    "padt.datasets.ric": ("convert_ric",),
    "padt.datasets.summary": ("ConversionSummary",),
    "padt.datasets.synthetic": ("SyntheticDataset", "generate_synthetic"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'padt.datasets' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
