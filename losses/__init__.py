"""padt.losses: see the package docstring of each module."""
from padt._subpackage_guard import refuse_top_level_import

refuse_top_level_import(__name__, "losses")

from .box import box_loss  # noqa: E402
from .box_ops import (  # noqa: E402
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    elementwise_box_iou,
    elementwise_generalized_box_iou,
)
from .criterion import LOSS_TERMS, PaDTCriterion, check_finite  # noqa: E402
from .mask import mask_loss, valid_from_hw  # noqa: E402
from .robust_ce import (  # noqa: E402
    AnswerLogits,
    TokenCEOutput,
    answer_logits,
    object_exclusion_pairs,
    robust_token_cross_entropy,
)
from .score import score_loss  # noqa: E402

__all__ = [
    "LOSS_TERMS",
    "AnswerLogits",
    "PaDTCriterion",
    "TokenCEOutput",
    "answer_logits",
    "box_cxcywh_to_xyxy",
    "box_loss",
    "box_xyxy_to_cxcywh",
    "check_finite",
    "elementwise_box_iou",
    "elementwise_generalized_box_iou",
    "mask_loss",
    "object_exclusion_pairs",
    "robust_token_cross_entropy",
    "score_loss",
    "valid_from_hw",
]
