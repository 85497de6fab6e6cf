"""Training examples from records: teacher-forced answers with sampled VRTs, and the decoder's targets.

For every record the dataset picks the VRTs that stand for each object (5 drawn at random by default, as
PaDT trains), renders the answer with them, and prepares the targets of the decoder: the box (cx, cy, w, h)
normalised to the image, the mask at the decoder's resolution and the object's full patch set (for the robust
cross-entropy). Sampling is a pure function of ``(seed, epoch, index)``, so an interrupted run resumes with
exactly the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from padt.configuration import PaDTConfig
from padt.datasets.patches import sample_vrt_patches
from padt.datasets.records import GroundingRecord, check_grid, image_path
from padt.losses.box_ops import box_xyxy_to_cxcywh
from padt.text.answer_formats import get_answer_format
from padt.vision.geometry import ImageGeometry
from padt.vision.masks import rle_to_mask
from padt.vision.queries import ObjectQueries


def check_images(records: list[GroundingRecord], images_root: str | Path, shown: int = 20) -> None:
    """Raise ``FileNotFoundError`` naming every image of ``records`` that is not a file under ``images_root``.

    All missing images are reported at once (their count, and the first ``shown`` paths with the ids of the
    records that use them), so a run fails before its first step instead of when the image's batch comes up.
    Paths that leave the root raise :class:`~padt.datasets.records.RecordError` (:func:`image_path`).
    """
    users: dict[str, list[GroundingRecord]] = {}  # image path -> the records that use it
    for record in records:
        users.setdefault(record.image, []).append(record)
    # One stat per distinct image (COCO: several records per image); the path check is the same for each user.
    missing = {
        image: [r.id for r in used] for image, used in users.items() if not image_path(images_root, used[0]).is_file()
    }
    if not missing:
        return
    listed = [f"{image} (record {', '.join(ids[:3])}{', ...' if len(ids) > 3 else ''})"
              for image, ids in list(missing.items())[:shown]]
    more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
    hint = "; is the images folder right?" if len(missing) == len(users) else ""
    raise FileNotFoundError(
        f"{len(missing)} of the {len(users)} images named by the records are missing under {images_root}: "
        f"{', '.join(listed)}{more}{hint}"
    )


@dataclass
class ObjectTarget:
    """One object of one example, in the order its VRTs appear in the answer.

    Attributes:
        vrts: the sampled local VRT indices written in the answer (raster on the merged grid).
        patches: all patches of the object (the robust CE masks the others out).
        box: (cx, cy, w, h) normalised to the image.
        mask: bool [H·s, W·s] on the ViT patch grid with ``s`` mask pixels per patch, or None without a mask.
    """

    vrts: list[int]
    patches: list[int]
    box: tuple[float, float, float, float]
    mask: np.ndarray | None


@dataclass
class TrainingExample:
    image: Any
    prompt: str
    answer: str
    objects: list[ObjectTarget]
    record_id: str


class GroundingDataset(Dataset):
    """Records -> :class:`TrainingExample` (the image loaded, the answer rendered with sampled VRTs).

    Args:
        records: from :func:`padt.datasets.records.read_jsonl`.
        images_root: folder the records' ``image`` paths are relative to; a path that leaves it is refused here
            (:func:`~padt.datasets.records.image_path`). Whether the files exist is :func:`check_images`'s job.
        processor: the model's :class:`~padt.processing.PaDTProcessor` (its grid must be the records' grid).
        mask_scale: mask pixels per ViT patch side of the decoder (``2 ** mask_upscale_stages``).
        vrts_per_object, sampling: VRT sampling (see :func:`padt.datasets.patches.sample_vrt_patches`).
        seed: base seed; call :meth:`set_epoch` to draw new VRTs each epoch.
        answer_format: the name of the :mod:`padt.text.answer_formats` format that renders the answer; one that
            names no patches (``"text-boxes"``) gives no object targets (no VRTs, no decoder terms).
    """

    def __init__(
        self,
        records: list[GroundingRecord],
        images_root: str | Path,
        processor,
        *,
        mask_scale: int,
        vrts_per_object: int = PaDTConfig.num_vrt_per_object,
        sampling: str = "random",
        seed: int = 0,
        answer_format: str = "vrt",
    ) -> None:
        if not records:
            raise ValueError("the training set is empty: no records were given")
        self.records = records
        self.images_root = Path(images_root)
        self.processor = processor
        self.mask_scale = mask_scale
        self.vrts_per_object = vrts_per_object
        self.sampling = sampling
        self.seed = seed
        self.epoch = 0
        self.answer_format = get_answer_format(answer_format)
        check_grid(records, processor)
        for record in records:
            image_path(self.images_root, record)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> TrainingExample:
        record = self.records[index]
        path = image_path(self.images_root, record)
        if not path.is_file():
            raise FileNotFoundError(f"record {record.id}: image file not found: {path}")
        image = self.processor.load(path)
        geometry = self.processor.geometry(image)
        if record.image_hw is not None and tuple(record.image_hw) != geometry.original_hw:
            raise ValueError(
                f"record {record.id}: image {path} is {geometry.original_hw} (h, w) but the record says "
                f"{tuple(record.image_hw)}"
            )
        if not self.answer_format.names_patches:  # no VRTs to sample, no decoder targets
            answer = self.answer_format.training_answer(record, geometry, [])
            return TrainingExample(image, record.prompt, answer, [], record.id)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        merged_w = geometry.merged_grid_hw[1]
        chosen = {
            i: sample_vrt_patches(obj.patches, self.vrts_per_object, self.sampling, rng, grid_width=merged_w)
            for i, obj in enumerate(record.objects)
        }
        answer = self.answer_format.training_answer(record, geometry, [chosen[i] for i in range(len(record.objects))])
        targets = [
            ObjectTarget(
                vrts=chosen[i],
                patches=list(record.objects[i].patches),
                box=_cxcywh_target(record.objects[i].bbox),
                mask=self._mask_target(record.objects[i].rle, geometry),
            )
            for i in record.referenced_objects()
        ]
        return TrainingExample(image, record.prompt, answer, targets, record.id)

    def _mask_target(self, rle: dict | None, geometry: ImageGeometry) -> np.ndarray | None:
        """Original-resolution RLE -> bool mask on the decoder's grid (bilinear resize, threshold 0.5)."""
        if rle is None:
            return None
        mask = rle_to_mask(rle).astype(np.float32)
        grid_h, grid_w = geometry.patch_grid_hw
        size = (grid_w * self.mask_scale, grid_h * self.mask_scale)  # cv2 takes (width, height)
        return cv2.resize(mask, size, interpolation=cv2.INTER_LINEAR) > 0.5


def _cxcywh_target(bbox_xyxy: list[float]) -> tuple[float, float, float, float]:
    """The decoder's box target: a record's normalised xyxy box as normalised ``(cx, cy, w, h)`` Python floats."""
    # float64, so the numbers are those of Python float arithmetic; the collator makes them float32 for the batch.
    return tuple(box_xyxy_to_cxcywh(torch.tensor(bbox_xyxy, dtype=torch.float64)).tolist())


@dataclass
class TrainingBatch:
    """A collated batch: the processor's tensors plus flat object targets (K objects in the batch).

    Attributes:
        inputs: the processor's batch (``input_ids`` with local VRT ids, ``answer_mask``, ...).
        object_sample: [K] sample of each object.
        vrt_counts: [K] VRTs written per object.
        vrt_positions: [ΣQ] sequence positions of every object's VRT tokens, object after object.
        vrt_local: [ΣQ] their local VRT indices.
        exclude_local: [E, 3] rows (sample, label position, local patch): the object's other GT patches at
            each of its VRT targets' label positions (position − 1), for the robust cross-entropy.
        boxes: [K, 4] (cx, cy, w, h) normalised.
        masks: [K, Hm, Wm] bool, zero-padded; ``mask_hw`` [K, 2] valid size; ``has_mask`` [K].
    """

    inputs: Any
    object_sample: torch.Tensor
    vrt_counts: torch.Tensor
    vrt_positions: torch.Tensor
    vrt_local: torch.Tensor
    exclude_local: torch.Tensor
    boxes: torch.Tensor
    masks: torch.Tensor
    mask_hw: torch.Tensor
    has_mask: torch.Tensor

    @property
    def num_objects(self) -> int:
        return int(self.vrt_counts.numel())

    @property
    def queries(self) -> ObjectQueries:
        """The decoder's queries: each object's VRTs at their positions in the teacher-forced sequence."""
        return ObjectQueries(self.object_sample, self.vrt_counts, self.vrt_local, self.vrt_positions)

    def to(self, device: torch.device | str) -> TrainingBatch:
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(self).items()}
        moved["inputs"] = self.inputs.to(device)
        return TrainingBatch(**moved)


class GroundingCollator:
    """Collate :class:`TrainingExample` lists into a :class:`TrainingBatch` with the model's processor."""

    def __init__(self, processor, mask_scale: int) -> None:
        self.processor = processor
        self.mask_scale = mask_scale

    def __call__(self, examples: list[TrainingExample]) -> TrainingBatch:
        inputs = self.processor(
            [e.image for e in examples], [e.prompt for e in examples], answers=[e.answer for e in examples]
        )
        vrt_start = self.processor.vrt_id_start
        ids, answer_mask = inputs["input_ids"], inputs["answer_mask"]
        object_sample, counts, positions, local, exclude, boxes, masks, has_mask, mask_hw = ([] for _ in range(9))
        for b, (example, geometry) in enumerate(zip(examples, inputs.geometries)):
            grid_h, grid_w = geometry.patch_grid_hw
            vrt_pos = ((ids[b] >= vrt_start) & answer_mask[b]).nonzero().flatten().tolist()
            expected = [v for obj in example.objects for v in obj.vrts]
            written = [int(ids[b, p]) - vrt_start for p in vrt_pos]
            if written != expected:
                raise ValueError(
                    f"example {example.record_id}: the answer's VRT tokens {written} do not match its objects' "
                    f"sampled VRTs {expected}; is every <|Obj_N|> placeholder rendered exactly once?"
                )
            cursor = 0
            for obj in example.objects:
                obj_pos = vrt_pos[cursor : cursor + len(obj.vrts)]
                cursor += len(obj.vrts)
                object_sample.append(b)
                counts.append(len(obj.vrts))
                positions.extend(obj_pos)
                local.extend(obj.vrts)
                exclude.extend((b, p - 1, patch) for p in obj_pos for patch in obj.patches)
                boxes.append(obj.box)
                has_mask.append(obj.mask is not None)
                masks.append(obj.mask)
                mask_hw.append((grid_h * self.mask_scale, grid_w * self.mask_scale))
        return TrainingBatch(
            inputs=inputs,
            object_sample=torch.tensor(object_sample, dtype=torch.long),
            vrt_counts=torch.tensor(counts, dtype=torch.long),
            vrt_positions=torch.tensor(positions, dtype=torch.long),
            vrt_local=torch.tensor(local, dtype=torch.long),
            exclude_local=torch.tensor(exclude, dtype=torch.long).view(-1, 3),
            boxes=torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
            masks=_pad_masks(masks, mask_hw),
            mask_hw=torch.tensor(mask_hw, dtype=torch.long).view(-1, 2),
            has_mask=torch.tensor(has_mask, dtype=torch.bool),
        )


def _pad_masks(masks: list[np.ndarray | None], sizes: list[tuple[int, int]]) -> torch.Tensor:
    if not masks:
        return torch.zeros(0, 1, 1, dtype=torch.bool)
    height = max(h for h, _ in sizes)
    width = max(w for _, w in sizes)
    out = torch.zeros(len(masks), height, width, dtype=torch.bool)
    for k, mask in enumerate(masks):
        if mask is not None:
            out[k, : mask.shape[0], : mask.shape[1]] = torch.from_numpy(mask)
    return out
