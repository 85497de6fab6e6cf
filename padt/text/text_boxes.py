"""The text-coordinate baseline's answer format: Qwen2.5-VL's own JSON grounding output.

PaDT's ablation (the paper's Tab. 5) compares answering with visual reference tokens against answering
with box coordinates written as text. The text answer here is what Qwen2.5-VL itself writes when asked to ground
objects: a fenced JSON list of ``{"bbox_2d": [x1, y1, x2, y2], "label": ...}`` with integer **absolute pixel
coordinates of the resized image** (the image after ``smart_resize``,
:attr:`padt.vision.images.ImageGeometry.resized_hw`;
Qwen2.5-VL uses absolute coordinates of its input, unlike Qwen2-VL's 0-1000 grid)::

    ```json
    [
    	{"bbox_2d": [12, 40, 96, 131], "label": "the red circle"}
    ]
    ```

:func:`text_box_answer` renders it, :func:`parse_text_boxes` reads it back to original-image pixels. The parser
never raises on model output: malformed JSON, missing or ill-typed keys and cut-off answers become ``problems``
(human-readable strings); complete objects before a defect are still returned.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from padt.vision.geometry import ImageGeometry

_FENCE_OPEN = "```json\n"
_FENCE_CLOSE = "```"
_FENCED = re.compile(r"```(?:json)?[ \t]*\n?(.*?)(```|$)", re.DOTALL)


def text_box_answer(objects: Sequence[tuple[str, Sequence[float]]], geometry: ImageGeometry) -> str:
    """Qwen2.5-VL's JSON grounding answer for ``objects``.

    Args:
        objects: ``(label, (x1, y1, x2, y2))`` per object, the box in **original-image** pixels, in answer order.
        geometry: the image's geometry; coordinates are written as integers in its ``resized_hw`` pixels.
    """
    resized_h, resized_w = geometry.resized_hw
    lines = []
    for label, box in objects:
        x1, y1, x2, y2 = (float(v) for v in box)
        corners = (*geometry.to_resized(x1, y1), *geometry.to_resized(x2, y2))
        limits = (resized_w, resized_h, resized_w, resized_h)
        coords = [min(limit, max(0, round(v))) for v, limit in zip(corners, limits)]
        lines.append("\t" + json.dumps({"bbox_2d": coords, "label": str(label)}, ensure_ascii=False))
    body = "[\n" + ",\n".join(lines) + "\n]" if lines else "[]"
    return _FENCE_OPEN + body + "\n" + _FENCE_CLOSE


def record_text_box_answer(record: Any, geometry: ImageGeometry) -> str:
    """The JSON answer of a grounding record (OVD or REC): its objects in answer-template order, with labels.

    The records' boxes are normalised to the original image; RIC records (captions) have no text-box form.
    """
    if record.task == "ric":
        raise ValueError(
            f"record {record.id}: the text-boxes answer format covers OVD and REC records, not captions (RIC)"
        )
    # Imported here: this module is read by the command line's parser, which should not pay for torch.
    import torch

    from padt.losses.box_ops import normalised_to_pixels

    objects = []
    for index in record.referenced_objects():
        obj = record.objects[index]
        # float64, so the pixels are those of Python float arithmetic
        box = normalised_to_pixels(torch.tensor(obj.bbox, dtype=torch.float64), geometry.original_hw)
        objects.append((obj.label, tuple(box.tolist())))
    return text_box_answer(objects, geometry)


def _json_part(text: str) -> tuple[str | None, list[str]]:
    """The JSON inside the answer's fence (or from its first ``[``/``{``), and what was odd about the fence."""
    problems: list[str] = []
    match = _FENCED.search(text)
    if match is not None:
        if match.group(2) != _FENCE_CLOSE:
            problems.append("the ```json block is never closed")
        return match.group(1), problems
    starts = [i for i in (text.find("["), text.find("{")) if i >= 0]
    if not starts:
        return None, problems
    return text[min(starts):], problems


def _salvage(part: str) -> list[Any]:
    """The complete JSON objects (``{...}``) of a malformed or cut-off list, in order."""
    decoder = json.JSONDecoder()
    found, index = [], 0
    while True:
        index = part.find("{", index)
        if index < 0:
            return found
        try:
            value, end = decoder.raw_decode(part, index)
        except json.JSONDecodeError:
            index += 1
            continue
        found.append(value)
        index = end


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def parse_text_boxes(
    text: str, geometry: ImageGeometry, *, truncated: bool = False
) -> tuple[list[tuple[str, tuple[float, float, float, float]]], list[str]]:
    """Boxes of a JSON grounding answer, in original-image pixels. Never raises on malformed text.

    Args:
        text: the answer (special tokens already removed).
        geometry: the image's geometry: coordinates are read as ``resized_hw`` pixels, clipped to that image and
            scaled by ``original / resized`` per axis.
        truncated: the answer was cut off (no end-of-sequence token): reported, and only the objects that were
            complete before the cut are kept.

    Returns:
        ``(objects, problems)``: ``objects`` is a list of ``(label, (x1, y1, x2, y2))``, ``problems`` a list of
        strings (empty for a well-formed answer). An entry without a usable ``bbox_2d`` (missing, not four finite
        numbers) is dropped and reported; a missing or non-string ``label`` becomes ``""`` and is reported;
        corners given in the wrong order are swapped, coordinates outside the image clipped, both reported.
    """
    problems: list[str] = []
    if truncated:
        problems.append("answer cut off: no end-of-sequence token")
    part, fence_problems = _json_part(text)
    if not truncated:
        problems += fence_problems
    if part is None or not part.strip():
        problems.append("no JSON list of boxes in the answer")
        return [], problems
    try:
        data = json.loads(part)
    except json.JSONDecodeError as error:
        if not truncated:
            problems.append(f"malformed JSON ({error.msg} at char {error.pos}); complete entries kept")
        data = _salvage(part)
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        problems.append(f"the JSON is a {type(data).__name__}, not a list of boxes")
        return [], problems

    resized_h, resized_w = geometry.resized_hw
    objects: list[tuple[str, tuple[float, float, float, float]]] = []
    for k, entry in enumerate(data):
        if not isinstance(entry, dict):
            problems.append(f"entry {k} is a {type(entry).__name__}, not an object; dropped")
            continue
        if "bbox_2d" not in entry:
            problems.append(f"entry {k} has no 'bbox_2d'; dropped")
            continue
        raw = entry["bbox_2d"]
        values = [_number(v) for v in raw] if isinstance(raw, list) else []
        if len(values) != 4 or any(v is None for v in values):
            problems.append(f"entry {k}: 'bbox_2d' must be four finite numbers, got {raw!r}; dropped")
            continue
        label = entry.get("label")
        if not isinstance(label, str):
            problems.append(f"entry {k} has no string 'label'" + ("" if label is None else f" (got {label!r})"))
            label = ""
        x1, y1, x2, y2 = values
        if x1 > x2 or y1 > y2:
            problems.append(f"entry {k}: corners out of order in {raw!r}; swapped")
            x1, x2, y1, y2 = min(x1, x2), max(x1, x2), min(y1, y2), max(y1, y2)
        clipped = [min(max(x1, 0.0), resized_w), min(max(y1, 0.0), resized_h),
                   min(max(x2, 0.0), resized_w), min(max(y2, 0.0), resized_h)]
        if clipped != [x1, y1, x2, y2]:
            problems.append(f"entry {k}: {raw!r} reaches outside the {resized_w}x{resized_h} image; clipped")
        box = (*geometry.to_original(clipped[0], clipped[1]), *geometry.to_original(clipped[2], clipped[3]))
        objects.append((label, box))
    return objects, problems
