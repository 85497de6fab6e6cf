"""The PaDT grounding record: one image, one prompt, one answer template and the objects it points at.

Conventions used throughout ``padt.datasets``:

* ``bbox`` is normalised ``[x1 / W, y1 / H, x2 / W, y2 / H]`` of the *original* image (W, H its width and height).
  The processor stretches the image without padding, so the same numbers describe the box on the resized image.
* ``patches`` are raster indices ``k = row * W' + col`` on the *merged* grid ``(H', W')`` that
  the record's :class:`~padt.vision.geometry.GridSpec` gives for the original size; one index is one
  visual reference token (VRT) candidate.
* ``rle`` is COCO run-length encoding of the object's original-resolution mask with ``counts`` as ``str``.
* ``answer_template`` names object ``N`` with the placeholder ``<|Obj_N|>``; training replaces each placeholder by
  VRTs sampled from ``objects[N].patches``.

Two JSONL layouts are read: ours (``prompt``, ``image_hw``, ``grid``, ``image_id``) and the official published one
(``conversations``, task ``"refering"``, no size or grid). :func:`write_jsonl` writes ours, or the official one
with ``official=True``.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from padt.vision.geometry import GridSpec, ImageGeometry
from padt.vision.images import open_image

PathLike = str | os.PathLike

TASKS = ("ovd", "rec", "ric")
#: Task names the official data uses, mapped to ours ("refering" is their spelling).
TASK_ALIASES = {"refering": "rec", "referring": "rec"}
#: The placeholder an answer template uses for object N.
PLACEHOLDER = re.compile(r"<\|Obj_(\d+)\|>")


def placeholder(index: int) -> str:
    """The answer-template placeholder of object ``index``: ``<|Obj_{index}|>``."""
    return f"<|Obj_{index}|>"


class RecordError(ValueError):
    """A record field is missing or malformed; ``field`` is its dotted path (``objects[2].bbox``)."""

    def __init__(self, field_path: str, message: str) -> None:
        super().__init__(f"field '{field_path}': {message}")
        self.field = field_path
        self.message = message


def grid_from_dict(data: Any, where: str = "grid") -> GridSpec:
    """The :class:`GridSpec` of a record's ``grid`` object; :class:`RecordError` names a missing or bad field."""
    if not isinstance(data, Mapping):
        raise RecordError(where, f"expected an object, got {type(data).__name__}")
    values = {name: _positive_int(data, name, f"{where}.{name}") for name in GridSpec().to_dict()}
    if data.get("longest_side") is not None:  # optional: records written before it existed have none
        values["longest_side"] = _positive_int(data, "longest_side", f"{where}.longest_side")
    return GridSpec(**values)


@dataclass
class GroundingObject:
    """One object an answer points at.

    Attributes:
        patches: sorted, unique raster indices ``row * W' + col`` on the merged grid.
        bbox: normalised ``[x1/W, y1/H, x2/W, y2/H]`` of the original image, ``0 <= x1 <= x2 <= 1``.
        label: the category (OVD), the referring sentence (REC) or ``""`` (RIC).
        rle: COCO RLE ``{"size": [H, W], "counts": str}`` of the original-resolution mask; ``None`` when the
            annotation had no segmentation (its patches then come from the box, and no mask loss applies).
        iscrowd: COCO's crowd flag (0 or 1).
        area: the annotation's area in original pixels.
    """

    patches: list[int]
    bbox: list[float]
    label: str = ""
    rle: dict[str, Any] | None = None
    iscrowd: int = 0
    area: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "patches": list(self.patches),
            "bbox": list(self.bbox),
            "label": self.label,
            "rle": None if self.rle is None else dict(self.rle),
            "iscrowd": self.iscrowd,
            "area": self.area,
        }

    @classmethod
    def from_dict(cls, data: Any, where: str, *, official: bool = False) -> GroundingObject:
        """Parse and check one object; the official format may omit ``label``/``rle`` and overshoot [0, 1]."""
        if not isinstance(data, Mapping):
            raise RecordError(where, f"expected an object, got {type(data).__name__}")
        patches = _require(data, "patches", list, where)
        for i, value in enumerate(patches):
            if not _is_int(value) or value < 0:
                raise RecordError(f"{where}.patches[{i}]", f"expected a non-negative integer, got {value!r}")
        if not patches:
            raise RecordError(f"{where}.patches", "an object must select at least one patch")
        if any(a >= b for a, b in itertools.pairwise(patches)):
            raise RecordError(f"{where}.patches", "indices must be sorted and unique")
        bbox = _parse_bbox(_require(data, "bbox", list, where), f"{where}.bbox", clip=official)
        label = data.get("label", "") if official else _require(data, "label", str, where)
        if not isinstance(label, str):
            raise RecordError(f"{where}.label", f"expected a string, got {type(label).__name__}")
        rle = data.get("rle") if official else _require(data, "rle", (dict, type(None)), where)
        if rle is not None:
            _check_rle(rle, f"{where}.rle")
        iscrowd = _require(data, "iscrowd", int, where) if not official else data.get("iscrowd", 0)
        if not _is_int(iscrowd) or iscrowd not in (0, 1):
            raise RecordError(f"{where}.iscrowd", f"expected 0 or 1, got {iscrowd!r}")
        area = _require(data, "area", (int, float), where) if not official else data.get("area", 0.0)
        if not _is_number(area) or area < 0:
            raise RecordError(f"{where}.area", f"expected a non-negative number, got {area!r}")
        return cls(list(patches), bbox, label, None if rle is None else dict(rle), int(iscrowd), float(area))


@dataclass
class GroundingRecord:
    """One training/evaluation sample: an image, a prompt and an answer whose placeholders name ``objects``.

    Attributes:
        id: unique within its file (``"139"`` OVD, ``"refcoco-5-12"`` REC, ``"ric-139-0"`` RIC); the official
            data reuses image ids.
        image: path of the image relative to an images root (COCO ``file_name``).
        task: ``"ovd"``, ``"rec"`` or ``"ric"``.
        prompt: the user's text; the image goes before it in the chat.
        answer_template: the answer with ``<|Obj_N|>`` for object ``N``.
        objects: what the placeholders point at.
        image_hw: original (height, width); ``None`` only for official records read without an images root.
        grid: processor settings the patches were computed for.
        image_id: COCO image id when known; the leakage guard compares these across datasets.
    """

    id: str
    image: str
    task: str
    prompt: str
    answer_template: str
    objects: list[GroundingObject]
    image_hw: tuple[int, int] | None
    grid: GridSpec = field(default_factory=GridSpec)
    image_id: int | None = None

    def referenced_objects(self) -> list[int]:
        """Object indices in the order their placeholders appear in ``answer_template``."""
        return [int(match) for match in PLACEHOLDER.findall(self.answer_template)]

    def geometry(self) -> ImageGeometry | None:
        """The image's grid under ``grid``, or ``None`` when the size is unknown."""
        return None if self.image_hw is None else self.grid.geometry(*self.image_hw)

    def validate(self) -> None:
        """Check the cross-field rules; raise :class:`RecordError` naming the field.

        Every placeholder must name an existing object, every object must be referenced, and with a known size
        every patch index must lie on the merged grid.
        """
        if self.task not in TASKS:
            raise RecordError("task", f"expected one of {TASKS}, got {self.task!r}")
        referenced = set()
        for index in self.referenced_objects():
            if index >= len(self.objects):
                raise RecordError(
                    "answer_template", f"placeholder <|Obj_{index}|> but only {len(self.objects)} objects"
                )
            referenced.add(index)
        for index in range(len(self.objects)):
            if index not in referenced:
                raise RecordError(f"objects[{index}]", "never referenced by a placeholder in answer_template")
        geometry = self.geometry()
        if geometry is not None:
            for index, obj in enumerate(self.objects):
                if obj.rle is not None and list(obj.rle["size"]) != list(self.image_hw or ()):
                    raise RecordError(
                        f"objects[{index}].rle.size", f"{obj.rle['size']} differs from image_hw {self.image_hw}"
                    )
                if obj.patches and obj.patches[-1] >= geometry.num_vrts:
                    raise RecordError(
                        f"objects[{index}].patches",
                        f"index {obj.patches[-1]} is off the {geometry.merged_grid_hw} merged grid",
                    )

    def to_dict(self) -> dict[str, Any]:
        """Our JSONL layout."""
        return {
            "id": self.id,
            "image": self.image,
            "image_id": self.image_id,
            "task": self.task,
            "prompt": self.prompt,
            "answer_template": self.answer_template,
            "objects": [obj.to_dict() for obj in self.objects],
            "image_hw": None if self.image_hw is None else list(self.image_hw),
            "grid": self.grid.to_dict(),
        }

    def to_official_dict(self) -> dict[str, Any]:
        """The official layout (``conversations``, task ``"refering"``), for the official trainer."""
        objects = []
        for obj in self.objects:
            entry = obj.to_dict()
            if entry["rle"] is None:
                del entry["rle"]  # the official data omits the key for box-only objects
            objects.append(entry)
        return {
            "id": self.image_id if self.image_id is not None else self.id,
            "image": self.image,
            "conversations": [{"from": "human", "value": self.prompt}],
            "answer_template": self.answer_template,
            "objects": objects,
            "task": "refering" if self.task == "rec" else self.task,
        }

    @classmethod
    def from_dict(cls, data: Any) -> GroundingRecord:
        """Parse either layout (chosen by the presence of ``conversations``) and :meth:`validate` it."""
        if not isinstance(data, Mapping):
            raise RecordError("<record>", f"expected a JSON object, got {type(data).__name__}")
        official = _is_official(data)
        raw_id = data.get("id")
        if raw_id is None:
            raise RecordError("id", "missing")
        if not (isinstance(raw_id, str) or _is_int(raw_id)):
            raise RecordError("id", f"expected a string or an integer, got {type(raw_id).__name__}")
        image = _require(data, "image", str, "")
        if not image:
            raise RecordError("image", "must not be empty")
        task = _require(data, "task", str, "")
        task = TASK_ALIASES.get(task, task)
        if task not in TASKS:
            raise RecordError("task", f"expected one of {TASKS} (or 'refering'), got {task!r}")
        prompt = _official_prompt(data) if official else _require(data, "prompt", str, "")
        template = _require(data, "answer_template", str, "")
        raw_objects = _require(data, "objects", list, "")
        objects = [
            GroundingObject.from_dict(obj, f"objects[{i}]", official=official) for i, obj in enumerate(raw_objects)
        ]
        if official:
            image_hw, grid = None, GridSpec()
            image_id = int(raw_id) if _is_int(raw_id) else None
        else:
            if "image_hw" not in data:
                raise RecordError("image_hw", "missing")
            image_hw = None if data["image_hw"] is None else _parse_hw(data["image_hw"])
            grid = grid_from_dict(_require(data, "grid", dict, ""))
            image_id = data.get("image_id")
            if image_id is not None and not _is_int(image_id):
                raise RecordError("image_id", f"expected an integer or null, got {image_id!r}")
        record = cls(str(raw_id), image, task, prompt, template, objects, image_hw, grid, image_id)
        record.validate()
        return record


def read_jsonl(path: PathLike, *, images_root: PathLike | None = None) -> list[GroundingRecord]:
    """Read records from a JSONL file in either layout; blank lines are skipped.

    ``images_root`` is checked to hold every record's image path (:func:`image_path`), and fills ``image_hw`` of
    official records (which carry no size) from the image headers. Ids must be unique within a file in our
    layout (the official layout reuses image ids as record ids, so its lines are exempt).
    Raises ``ValueError`` ``"<file>:<line>: field '<field>': <problem>"`` on the first malformed line.
    """
    path = Path(path)
    records = []
    first_line: dict[str, int] = {}  # record id -> line it first appeared on (our layout only)
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: not valid JSON: {error}") from error
            try:
                record = _read_line(data, images_root)
            except RecordError as error:
                raise ValueError(f"{path}:{line_number}: {error}") from error
            if not _is_official(data):
                first = first_line.setdefault(record.id, line_number)
                if first != line_number:
                    raise ValueError(
                        f"{path}:{line_number}: field 'id': duplicate id {record.id!r}, already used on line {first}; "
                        "record ids must be unique within a file"
                    )
            records.append(record)
    return records


def _read_line(data: Any, images_root: PathLike | None) -> GroundingRecord:
    """One parsed and validated record; with ``images_root``, its image path is checked (and sizes filled in)."""
    record = GroundingRecord.from_dict(data)
    if images_root is not None:
        location = image_path(images_root, record)
        if record.image_hw is None:
            record.image_hw = _image_size(location)
            record.validate()
    return record


def path_leaves_root(relative: str) -> bool:
    """Whether a path meant to be relative to a root is absolute or climbs above it with ``..`` (on its text)."""
    normalised = os.path.normpath(relative)
    return os.path.isabs(relative) or normalised == os.pardir or normalised.startswith(os.pardir + os.sep)


def image_path(images_root: PathLike, record: GroundingRecord) -> Path:
    """``images_root / record.image``; :class:`RecordError` (field ``image``) when that path leaves the root.

    Absolute paths and ``..`` above the root are refused. The check is on the path's text (``os.path.normpath``),
    not on resolved links, so a root whose entries are symlinks to other disks stays usable.
    """
    if path_leaves_root(record.image):
        raise RecordError(
            "image",
            f"record {record.id}: path {record.image!r} leaves the images root {images_root}; give the image's "
            "path relative to the images root, inside it (no absolute path, no '..' above it)",
        )
    return Path(images_root) / record.image


def write_jsonl(path: PathLike, records: Iterable[GroundingRecord], *, official: bool = False) -> int:
    """Validate and write ``records``, one JSON object per line (UTF-8); returns how many were written.

    Raises ``ValueError`` naming the record's position, id and field before anything invalid reaches the file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for position, record in enumerate(records):
            try:
                record.validate()
            except RecordError as error:
                raise ValueError(f"{path}: record {position} (id {record.id!r}): {error}") from error
            data = record.to_official_dict() if official else record.to_dict()
            handle.write(json.dumps(data, ensure_ascii=False) + "\n")
            count += 1
    return count


def _is_official(data: Any) -> bool:
    """Whether a JSON record is in the official layout (``conversations`` instead of ``prompt``)."""
    return isinstance(data, Mapping) and "conversations" in data and "prompt" not in data


def _official_prompt(data: Mapping[str, Any]) -> str:
    conversations = _require(data, "conversations", list, "")
    if not conversations or not isinstance(conversations[0], Mapping):
        raise RecordError("conversations", "expected a non-empty list of {from, value} turns")
    value = conversations[0].get("value")
    if not isinstance(value, str):
        raise RecordError("conversations[0].value", "expected the human prompt as a string")
    return value


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with open_image(path) as image:  # the header only, within padt's pixel limit
            width, height = image.size
    except (FileNotFoundError, ValueError, OSError) as error:
        raise RecordError("image", f"cannot read the size of {path}: {error}") from error
    return height, width


def _require(data: Mapping[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    path = f"{where}.{name}" if where else name
    if name not in data:
        raise RecordError(path, "missing")
    value = data[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is an int subclass; a JSON true where a count is expected is a mistake, not a 1.
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        names = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
        raise RecordError(path, f"expected {names}, got {type(value).__name__}")
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _positive_int(data: Mapping[str, Any], name: str, where: str) -> int:
    value = data.get(name)
    if not _is_int(value) or value <= 0:
        raise RecordError(where, f"expected a positive integer, got {value!r}")
    return int(value)


def _parse_hw(value: Any) -> tuple[int, int]:
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(_is_int(v) and v > 0 for v in value)
    ):
        raise RecordError("image_hw", f"expected [height, width] of positive integers, got {value!r}")
    return int(value[0]), int(value[1])


def _parse_bbox(value: list[Any], where: str, *, clip: bool) -> list[float]:
    if len(value) != 4 or not all(_is_number(v) for v in value):
        raise RecordError(where, f"expected 4 finite numbers, got {value!r}")
    box = [float(v) for v in value]
    if clip:
        # Published COCO boxes sometimes overshoot the image by a fraction of a pixel.
        box = [min(max(v, 0.0), 1.0) for v in box]
    if not all(0.0 <= v <= 1.0 for v in box):
        raise RecordError(where, f"normalised coordinates must lie in [0, 1], got {box}")
    if box[0] > box[2] or box[1] > box[3]:
        raise RecordError(where, f"expected x1 <= x2 and y1 <= y2, got {box}")
    return box


def _check_rle(rle: Any, where: str) -> None:
    if not isinstance(rle, Mapping):
        raise RecordError(where, f"expected a COCO RLE object or null, got {type(rle).__name__}")
    size = rle.get("size")
    if not isinstance(size, list) or len(size) != 2 or not all(_is_int(v) and v >= 0 for v in size):
        raise RecordError(f"{where}.size", f"expected [height, width], got {size!r}")
    if not isinstance(rle.get("counts"), str):
        raise RecordError(f"{where}.counts", "expected the compressed counts as a string")


def check_grid(records: Iterable[GroundingRecord], processor: Any) -> None:
    """Raise ``ValueError`` naming the first record whose image lands on another merged grid under ``processor``
    than under the settings its patches were computed for: its patch indices would name other cells.

    Grids are compared, not settings: records converted with another pixel budget (the default ``--max-pixels``,
    say) are fine for every image on which both budgets give the same merged grid, e.g. small images that neither
    budget resizes. A record without a size (an official record read without an images root) can only be compared
    by its settings. The message says how to convert again.
    """
    spec = processor.grid_spec
    how = "convert the data again with --model <this model's folder> (padt convert reads the processor's settings)"
    if getattr(spec, "longest_side", None) is not None:
        how += f"; only --model sets the processor's {spec.longest_side}-px longest side"
    elif (spec.patch_size, spec.merge_size) == (GridSpec().patch_size, GridSpec().merge_size):
        how += f", or with --min-pixels {spec.min_pixels} --max-pixels {spec.max_pixels}"
    grids: dict[tuple[GridSpec, tuple[int, int]], tuple[int, int]] = {}  # many records share a size and settings
    for record in records:
        if record.grid == spec:
            continue
        if record.image_hw is None:
            raise ValueError(
                f"record {record.id}: its patches were computed with grid settings {record.grid.to_dict()}, the "
                f"model's processor uses {spec.to_dict()}, and the record has no image_hw to compare the grids "
                f"(read official records with images_root=); {how}"
            )
        height, width = record.image_hw
        for settings in (record.grid, spec):
            if (settings, (height, width)) not in grids:
                grids[settings, (height, width)] = settings.geometry(height, width).merged_grid_hw
        theirs, ours = grids[record.grid, (height, width)], grids[spec, (height, width)]
        if theirs != ours:
            raise ValueError(
                f"record {record.id}: its patches lie on a {theirs[0]}x{theirs[1]} merged grid of its {height}x{width} "
                f"image (grid settings {record.grid.to_dict()}), but the model's processor ({spec.to_dict()}) puts "
                f"that image on a {ours[0]}x{ours[1]} grid; {how}"
            )
