"""``padt convert {coco,refcoco,ric,synthetic}``: turn public annotations into PaDT record files (JSONL).

:func:`register` adds the ``convert`` command to the ``padt`` parser; each subcommand's ``run_*`` function takes
the parsed arguments, prints the conversion summary and returns the exit code. ``args.run`` is set to it.
The converters are imported inside the ``run_*`` functions: they pull in ``padt.vision.images`` and with it
transformers, which would make ``padt --help`` take seconds.

Every subcommand computes patches on the grid of a processor: ``--model DIR`` reads it from a model folder (patch
and merge size, pixel budget, ``longest_side``; a PaDT folder's processor, or a plain Qwen2.5-VL / Qwen3-VL
folder's backbone and preprocessor), so the records fit that model; ``--min-pixels``/``--max-pixels``
set the budget by hand (default: Qwen2.5-VL's). The two ways are exclusive.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from padt.vision.geometry import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS, GridSpec

if TYPE_CHECKING:
    from padt.datasets.records import GroundingRecord
    from padt.datasets.summary import ConversionSummary


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``convert`` and its subcommands to ``subparsers`` (from ``parser.add_subparsers()``)."""
    convert = subparsers.add_parser(
        "convert", help="convert COCO / RefCOCO / RIC annotations or synthetic scenes to PaDT records (JSONL)"
    )
    commands = convert.add_subparsers(dest="convert_command", metavar="{coco,refcoco,ric,synthetic}")
    commands.required = True

    coco = commands.add_parser("coco", help="COCO instances -> open-vocabulary detection records")
    coco.add_argument("--instances", required=True, type=Path, help="instances_*.json")
    coco.add_argument("--images", required=True, type=Path, help="folder of the images")
    coco.add_argument("--split", required=True, choices=("train", "val"), help="train: shuffled, negatives dropped")
    coco.add_argument("--out", required=True, type=Path, help="output .jsonl")
    coco.add_argument("--seed", type=int, default=0, help="seed of the per-image category shuffle (train)")
    coco.add_argument("--max-side", type=int, default=1288, help="skip images with a longer side (px)")
    coco.add_argument("--max-instances", type=int, default=50, help="drop categories with more instances")
    coco.add_argument("--exclude-crowd", action="store_true", help="leave crowd annotations out of answers")
    _add_keep_exif(coco)
    _add_common(coco)
    coco.set_defaults(run=run_coco)

    refcoco = commands.add_parser("refcoco", help="RefCOCO/+/g refs -> referring expression records")
    refcoco.add_argument("--refs", required=True, type=Path, help="refs(unc).p or refs(umd).p")
    refcoco.add_argument("--instances", required=True, type=Path, help="the dataset's instances.json")
    refcoco.add_argument("--images", required=True, type=Path, help="folder of the COCO train2014 images")
    refcoco.add_argument("--split", required=True, help="train, val, test, testA, testB")
    refcoco.add_argument("--out", required=True, type=Path, help="output .jsonl")
    refcoco.add_argument("--name", default="refcoco", help="dataset name used in record ids (refcoco+, ...)")
    refcoco.add_argument(
        "--exclude-images-of", type=Path, action="append", default=[], metavar="FILE.jsonl",
        help="drop records on images used in these record files (leakage guard); repeatable",
    )
    refcoco.add_argument(
        "--warn-overlap-with", type=Path, action="append", default=[], metavar="FILE.jsonl",
        help="only warn about images shared with these record files; repeatable",
    )
    refcoco.add_argument(
        "--vlm-r1-split", type=Path, metavar="FILE.json",
        help="VLM-R1 rec_jsons_processed split file (e.g. refcoco_val.json): one record per item, in its order, "
        "the list the paper's REC/RES numbers are computed on",
    )
    _add_keep_exif(refcoco)
    _add_common(refcoco)
    refcoco.set_defaults(run=run_refcoco)

    ric = commands.add_parser("ric", help="RIC captions with box tags -> captioning records")
    ric.add_argument("--captions", required=True, type=Path, help="ric_instances_*.json (captions in images[])")
    ric.add_argument("--instances", required=True, type=Path, help="COCO instances (may be the captions file)")
    ric.add_argument("--images", required=True, type=Path, help="folder of the COCO 2017 images")
    ric.add_argument("--out", required=True, type=Path, help="output .jsonl")
    _add_keep_exif(ric)
    _add_common(ric)
    ric.set_defaults(run=run_ric)

    synthetic = commands.add_parser("synthetic", help="draw shape scenes; write COCO/RefCOCO files and records")
    synthetic.add_argument("--out", required=True, type=Path, help="output folder")
    synthetic.add_argument("--images", required=True, type=int, help="number of images")
    synthetic.add_argument("--seed", type=int, default=0, help="seed of the scenes (the same seed draws the same "
                           "scenes; default 0)")
    synthetic.add_argument("--image-size", type=int, nargs=2, default=(224, 224), metavar=("MIN", "MAX"),
                           help="image side range in pixels (default 224 224)")
    synthetic.add_argument("--objects", type=int, nargs=2, default=(1, 4), metavar=("MIN", "MAX"),
                           help="shapes per image (default 1 4)")
    synthetic.add_argument("--object-size", type=int, nargs=2, default=(32, 96), metavar=("MIN", "MAX"),
                           help="shape side range in pixels (default 32 96)")
    synthetic.add_argument("--occlusion", action="store_true", help="let shapes overlap")
    synthetic.add_argument("--val-fraction", type=float, default=0.2, help="fraction of images in split 'val'")
    synthetic.add_argument("--noise", type=float, default=6.0, help="background noise standard deviation")
    _add_common(synthetic)
    synthetic.set_defaults(run=run_synthetic)
    return convert


def run_coco(args: argparse.Namespace) -> int:
    from padt.datasets.coco import convert_coco

    records, summary = convert_coco(
        args.instances, args.images, args.split, args.seed, grid=_grid(args), max_side=args.max_side,
        max_instances=args.max_instances, include_crowd=not args.exclude_crowd,
        skip_exif_rotated=not args.keep_exif_rotated, progress=not args.quiet,
    )
    return _finish(args, records, summary)


def run_refcoco(args: argparse.Namespace) -> int:
    from padt.datasets.records import read_jsonl
    from padt.datasets.refcoco import convert_refcoco, convert_vlm_r1_split, drop_overlap, find_overlap

    options = {"name": args.name, "grid": _grid(args), "skip_exif_rotated": not args.keep_exif_rotated,
               "progress": not args.quiet}
    if args.vlm_r1_split is not None:
        if not args.vlm_r1_split.is_file():
            raise FileNotFoundError(f"--vlm-r1-split: file not found: {args.vlm_r1_split}")
        records, summary = convert_vlm_r1_split(
            args.vlm_r1_split, args.refs, args.instances, args.images, args.split, **options
        )
    else:
        records, summary = convert_refcoco(args.refs, args.instances, args.images, args.split, **options)
    for path in args.warn_overlap_with:
        overlap = find_overlap(records, read_jsonl(path))
        if overlap:
            summary.notes.append(
                f"WARNING: {len(overlap.image_ids)} image ids / {len(overlap.files)} files also in {path}"
            )
    for path in args.exclude_images_of:
        overlap = find_overlap(records, read_jsonl(path))
        records, dropped = drop_overlap(records, overlap)
        summary.skip("image_overlap", dropped)
        summary.records -= dropped
        summary.objects -= dropped  # one object per REC record
        summary.notes.append(f"dropped {dropped} records on images also in {path}")
    return _finish(args, records, summary)


def run_ric(args: argparse.Namespace) -> int:
    from padt.datasets.ric import convert_ric

    records, summary = convert_ric(
        args.captions, args.instances, args.images, grid=_grid(args), skip_exif_rotated=not args.keep_exif_rotated,
        progress=not args.quiet,
    )
    return _finish(args, records, summary)


def run_synthetic(args: argparse.Namespace) -> int:
    """Draw the scenes, then convert them with the COCO and RefCOCO readers, per split."""
    from padt.datasets.synthetic_records import convert_synthetic

    convert_synthetic(
        args.out, args.images, args.seed, grid=_grid(args), image_size=tuple(args.image_size),
        objects_per_image=tuple(args.objects), object_size=tuple(args.object_size), allow_occlusion=args.occlusion,
        noise=args.noise, val_fraction=args.val_fraction, official=args.official, progress=not args.quiet,
    )
    return 0


def _add_keep_exif(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-exif-rotated", action="store_true",
        help="keep images whose EXIF orientation is not 1 (the official data does; their annotations refer to the "
        "stored pixels, so evaluate them with padt eval --protocol paper)",
    )


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", type=Path, metavar="DIR",
        help="model folder whose processor decides the patch grid (patch/merge size, pixel budget, longest side); "
        "instead of --min-pixels/--max-pixels",
    )
    # Defaults are None so that an explicit value can be told from the default (it conflicts with --model).
    parser.add_argument(
        "--min-pixels", type=int, help=f"processor's min_pixels (patch grid; default {DEFAULT_MIN_PIXELS})"
    )
    parser.add_argument(
        "--max-pixels", type=int, help=f"processor's max_pixels (patch grid; default {DEFAULT_MAX_PIXELS})"
    )
    parser.add_argument("--official", action="store_true", help="write the official record layout instead")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _grid(args: argparse.Namespace) -> GridSpec:
    """The patch grid's settings: the ``--model`` folder's processor's, or the pixel budget given by hand."""
    if args.model is None:
        return GridSpec(
            min_pixels=DEFAULT_MIN_PIXELS if args.min_pixels is None else args.min_pixels,
            max_pixels=DEFAULT_MAX_PIXELS if args.max_pixels is None else args.max_pixels,
        )
    explicit = [flag for flag, value in (("--min-pixels", args.min_pixels), ("--max-pixels", args.max_pixels))
                if value is not None]
    if explicit:
        raise ValueError(
            f"--model {args.model} already sets the pixel budget (its processor's); leave out {' and '.join(explicit)}"
        )
    return model_grid(args.model)


def model_grid(folder: Path) -> GridSpec:
    """``PaDTProcessor.from_pretrained(folder).grid_spec`` of a PaDT folder, or the grid of a plain Qwen2.5-VL /
    Qwen3-VL folder (its backbone's patch and merge sizes, its preprocessor's pixel budget), with errors that
    name the folder."""
    if not folder.is_dir():
        raise FileNotFoundError(f"--model {folder}: model folder not found")
    from padt.model_folder import plain_backbone

    plain = plain_backbone(folder)
    if plain is not None:
        return GridSpec(**{"min_pixels": DEFAULT_MIN_PIXELS, "max_pixels": DEFAULT_MAX_PIXELS, **plain[1]})
    configs = ("processor_config.json", "preprocessor_config.json")
    if not any((folder / name).is_file() for name in configs):
        raise FileNotFoundError(
            f"--model {folder}: no {' or '.join(configs)} in the folder: pass a model folder written by "
            "save_pretrained (its processor holds the pixel budget)"
        )
    from padt.processing import PaDTProcessor

    try:
        return PaDTProcessor.from_pretrained(folder).grid_spec
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise ValueError(f"--model {folder}: cannot read its processor's settings: {error}") from error


def _finish(args: argparse.Namespace, records: list[GroundingRecord], summary: ConversionSummary) -> int:
    from padt.datasets.synthetic_records import write_records

    write_records(args.out, records, summary, official=args.official)
    return 0
