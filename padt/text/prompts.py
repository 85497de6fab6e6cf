"""The prompts and answer templates PaDT is trained on (those of the official code), character for character.

Answer templates name each object with a placeholder ``<|Obj_N|>`` (N = index into the record's object list);
:func:`render_answer` replaces each placeholder with that object's visual reference tokens ``<|VRT_k|>``, written
back to back with no separator (``<|VRT_3|><|VRT_4|>``), as in the official records and model outputs. ``k`` is
the sample-local patch index (raster order on the merged grid), see :mod:`padt.vision.codec`.

Expressions and category names are user text and enter the prompts as they are (only quotes are escaped): the
processor tokenises a prompt so that whatever it holds (``<|im_end|>``, ``<|image_pad|>``, ``<|VRT_3|>`` ...)
stays text (:meth:`padt.processing.PaDTProcessor.encode_prompt`). Answers are tokenised with their special tokens
(:meth:`~padt.processing.PaDTProcessor.encode_text`), so only trusted text belongs in answer templates.

Examples (OVD, REC, RIC)::

    In this image, there are 2 "person" (<|Obj_0|>, <|Obj_1|>), 1 "dog" (<|Obj_2|>).
    There is 1 "cat" (<|Obj_0|>) in this image.
    The "the red circle" refers to <|Obj_0|> in this image.
    A man (<|Obj_0|>) is riding a horse (<|Obj_1|>).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence

#: ``<|VRT_k|>``; group 1 is k.
VRT_PATTERN = re.compile(r"<\|VRT_(\d+)\|>")
#: ``<|Obj_N|>`` placeholders of answer templates; group 1 is N.
OBJ_PATTERN = re.compile(r"<\|Obj_(\d+)\|>")

#: The OVD answer when none of the prompted categories is present.
NO_OBJECTS_ANSWER = "No objects from the list are present in the image."

#: The 80 COCO detection categories in COCO id order.
COCO_CATEGORIES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip


def vrt_token(k: int) -> str:
    """The text form ``<|VRT_k|>`` of local VRT index ``k`` (k >= 0)."""
    if isinstance(k, bool) or int(k) != k or k < 0:
        raise ValueError(f"a VRT index must be a non-negative integer, got {k!r}")
    return f"<|VRT_{int(k)}|>"


def _escape_quoted(text: str) -> str:
    # Quotes delimit labels in answers; a backslash escapes a quote (or itself) so the parser can find the end.
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _check_expression(expression: str) -> str:
    if not isinstance(expression, str):
        raise TypeError(f"the referring expression must be a string, got {type(expression).__name__}")
    if not expression.strip():
        raise ValueError("the referring expression is empty")
    return _escape_quoted(expression)


def _check_categories(categories: Sequence[str]) -> list[str]:
    if isinstance(categories, str):
        raise TypeError("categories must be a list of names, not a single string")
    names = list(categories)
    if not names:
        raise ValueError("the category list is empty")
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"category names must be strings, got {name!r}")
        if not name.strip():
            raise ValueError(f"category names must not be empty or blank, got {name!r}")
        if '"' in name or "\\" in name:
            raise ValueError(f"category {name!r} contains a double quote or backslash, which would break the answer")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"categories must be distinct; repeated: {duplicates}")
    return names


def rec_prompt(expression: str) -> str:
    """REC/RES prompt. A ``"`` inside the expression is written as ``\\"`` (the official data has none)."""
    return (
        "Please carefully check the image and detect the object this sentence describes: "
        f'"{_check_expression(expression)}".'
    )


def ovd_prompt(categories: Sequence[str]) -> str:
    """OVD prompt listing ``categories`` as a JSON list (``["person", "dog"]``).

    Non-ASCII names are written as they are (the official preprocessing used ``json.dumps`` defaults, which would
    write ``\\u00e9``; COCO names are ASCII, so the prompts are identical for COCO).
    """
    names = _check_categories(categories)
    return "Please carefully check the image and detect the following objects: " + json.dumps(
        names, ensure_ascii=False
    ) + "."


def ric_prompt() -> str:
    """Referring image captioning prompt."""
    return "Please describe this image."


def rec_answer_template(expression: str) -> str:
    """``The "<expression>" refers to <|Obj_0|> in this image.``"""
    return f'The "{_check_expression(expression)}" refers to <|Obj_0|> in this image.'


def ovd_answer_template(object_labels: Sequence[str]) -> str:
    """OVD answer template for objects listed in answer order; object ``i`` becomes ``<|Obj_i|>``.

    Objects of one category must be contiguous (categories follow the prompt order, objects keep their order inside
    a category). One category gives ``There is 1 "cat" (...) in this image.`` / ``There are 3 "car" (..., ..., ...)
    in this image.``; several give ``In this image, there are 2 "person" (..., ...), 1 "dog" (...).`` (with
    "there are 1" kept verbatim, as in the official data); none gives :data:`NO_OBJECTS_ANSWER`.
    """
    if isinstance(object_labels, str):
        raise TypeError("object_labels must be a list with one label per object, not a single string")
    labels = list(object_labels)
    if not labels:
        return NO_OBJECTS_ANSWER
    groups: list[tuple[str, list[int]]] = []
    for index, label in enumerate(labels):
        if groups and groups[-1][0] == label:
            groups[-1][1].append(index)
        elif any(name == label for name, _ in groups):
            raise ValueError(f"objects of category {label!r} are not contiguous in object_labels")
        else:
            groups.append((label, [index]))
    _check_categories([name for name, _ in groups])
    parts = [
        f'{len(members)} "{name}" (' + ", ".join(f"<|Obj_{i}|>" for i in members) + ")" for name, members in groups
    ]
    if len(groups) == 1:
        return ("There is " if len(labels) == 1 else "There are ") + parts[0] + " in this image."
    return "In this image, there are " + ", ".join(parts) + "."


def render_answer(template: str, object_vrts: Sequence[Sequence[int]]) -> str:
    """Replace each ``<|Obj_N|>`` in ``template`` with ``object_vrts[N]`` as ``<|VRT_k|>`` tokens, back to back.

    Args:
        template: an answer template (see module docstring).
        object_vrts: per object, its local VRT indices in order (repeats allowed).
    Raises:
        ValueError: a placeholder names an object that ``object_vrts`` lacks, or an object has no VRTs.
    """

    def replace(match: re.Match[str]) -> str:
        index = int(match.group(1))
        if index >= len(object_vrts):
            raise ValueError(f"template names <|Obj_{index}|> but only {len(object_vrts)} objects were given")
        vrts = list(object_vrts[index])
        if not vrts:
            raise ValueError(f"object {index} has no VRTs to render")
        return "".join(vrt_token(k) for k in vrts)

    return OBJ_PATTERN.sub(replace, template)
