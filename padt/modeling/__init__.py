"""PaDT models: one class per backbone (:mod:`padt.backbones`), sharing :class:`PaDTModelMixin`.

``PaDTForConditionalGeneration.from_pretrained(folder)`` opens a PaDT folder of either backbone.
"""

from padt.modeling.base import PaDTModelMixin
from padt.modeling.qwen2_5_vl import PaDTForConditionalGeneration
from padt.modeling.qwen3_vl import PaDTQwen3VLForConditionalGeneration

#: The model class of each backbone, by backbone name.
MODEL_CLASSES = {
    PaDTForConditionalGeneration.config_class.backbone.name: PaDTForConditionalGeneration,
    PaDTQwen3VLForConditionalGeneration.config_class.backbone.name: PaDTQwen3VLForConditionalGeneration,
}

__all__ = ["MODEL_CLASSES", "PaDTForConditionalGeneration", "PaDTModelMixin", "PaDTQwen3VLForConditionalGeneration"]
