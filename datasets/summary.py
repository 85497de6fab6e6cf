"""What a conversion kept, fixed and skipped, with a count per reason: nothing is dropped silently."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: Short explanations printed next to each reason in :meth:`ConversionSummary.table`.
REASONS = {
    # skipped images / records / objects
    "image_missing": "image file not found under the images root",
    "image_unreadable": "image file cannot be opened",
    "image_size_mismatch": "image size differs from the annotation's width/height",
    "image_exif_rotated": "EXIF orientation != 1: annotations refer to the raw pixels, loaders rotate them",
    "image_too_large": "image's longer side above the limit",
    "image_overlap": "image also used by the excluded records (leakage guard)",
    "bad_image_info": "image entry lacks file_name or a positive integer height/width",
    "image_outside_root": "file_name is absolute or climbs above the images folder with ..: refused",
    "bad_ref": "ref lacks ref_id/ann_id/image_id or a sentence list",
    "unknown_image": "annotation or ref names an image id missing from the instances file",
    "bad_annotation": "annotation lacks a usable bbox or category",
    "bad_segmentation": "segmentation unreadable or of another size",
    "degenerate_box": "box has no area inside the image",
    "degenerate_segmentation": "every polygon of the segmentation is degenerate",
    "empty_mask": "mask has no foreground pixel",
    "no_patch": "object selects no merged-grid cell (below the coverage threshold)",
    "category_over_limit": "annotations of a category with more instances than the limit in one image",
    "crowd_excluded": "crowd annotation left out (include_crowd=False)",
    "ann_missing": "ref's annotation id not found in the instances file",
    "empty_sentence": "referring sentence is empty",
    "caption_unterminated": "caption does not end in '.' or '\"' (truncated generation)",
    "tag_unknown_ann": "caption tag names an annotation missing or of another image",
    "unparseable_tags": "caption still holds box_id text after repair",
    # fixes (kept, but changed)
    "box_clipped": "box reached outside the image and was clipped",
    "degenerate_polygon_dropped": "degenerate polygon part left out of a segmentation",
    "quote_replaced": 'double quote in a sentence replaced by \' (quotes delimit labels)',
    "tag_repaired": "malformed box_id tag rewritten",
    "stray_tag_removed": "leftover tag-like text removed from a caption",
    "tag_removed": "tag removed from a caption with its object",
}


@dataclass
class ConversionSummary:
    """Counts of one conversion run.

    Attributes:
        name: what was converted (``"coco train"``, ``"refcoco val"``, ...).
        images: images considered.
        records: records written.
        objects: objects kept across all records.
        skipped: reason -> how many images/records/objects/tags were skipped for it (see :data:`REASONS`).
        fixed: reason -> how many items were kept after a repair.
        notes: free-form lines (e.g. leakage warnings) printed under the table.
    """

    name: str
    images: int = 0
    records: int = 0
    objects: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    fixed: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, count: int = 1) -> None:
        if count:
            self.skipped[reason] += count

    def fix(self, reason: str, count: int = 1) -> None:
        if count:
            self.fixed[reason] += count

    def table(self) -> str:
        """A plain-text table: totals, then one line per skip and fix reason."""
        lines = [
            f"== {self.name} ==",
            f"  images considered : {self.images}",
            f"  records written   : {self.records}",
            f"  objects kept      : {self.objects}",
        ]
        for title, counter in (("skipped", self.skipped), ("fixed", self.fixed)):
            if counter:
                lines.append(f"  {title}:")
                width = max(len(reason) for reason in counter)
                for reason, count in sorted(counter.items()):
                    lines.append(f"    {reason:<{width}}  {count:>8}  {REASONS.get(reason, '')}".rstrip())
        lines.extend(f"  note: {note}" for note in self.notes)
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()
