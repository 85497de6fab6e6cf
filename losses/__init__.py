"""padt.losses: the PaDT losses as pure functions over tensors, and the criterion that weights them."""

from padt._lazy import lazy_exports, refuse_top_level_import

refuse_top_level_import(__name__, "losses")

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        ".box": ("box_loss",),
        ".box_ops": (
            "box_area", "box_cxcywh_to_xyxy", "box_iou", "box_xywh_to_xyxy", "box_xyxy_to_cxcywh", "box_xyxy_to_xywh",
            "clip_boxes", "elementwise_box_iou", "elementwise_generalized_box_iou", "normalised_to_pixels",
            "pixels_to_normalised",
        ),
        ".criterion": ("LOSS_TERMS", "PaDTCriterion", "check_finite"),
        ".mask": ("mask_loss", "valid_from_hw"),
        ".robust_ce": (
            "AnswerLogits", "TokenCEOutput", "answer_logits", "object_exclusion_pairs", "robust_token_cross_entropy",
        ),
        ".score": ("score_loss",),
    },
)
