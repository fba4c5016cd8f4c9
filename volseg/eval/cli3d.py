"""``volseg eval3d``: the interactive 3D robot over a folder of volumes and label maps.

Where the cases come from (one of):

* ``--layout msd``: a Medical Segmentation Decathlon / nnU-Net task folder: ``--images TASK`` holding
  ``imagesTr/`` and ``labelsTr/`` (or ``--images TASK/imagesTr --labels TASK/labelsTr``).  Images pair
  with the label of the same name; nnU-Net channel suffixes (``case_0000.nii.gz``) are dropped and
  only channel ``_0000`` is used.  Hidden files (the ``._*`` of MSD tarballs) are ignored.
* ``--layout pairs`` (default unless ``--images`` holds ``imagesTr``): ``--images DIR --labels DIR``
  with the same file stem, or the same stem once a trailing ``_image``/``_img``/``_0000`` (images) and
  ``_label``/``_labels``/``_seg``/``_mask``/``_gt`` (labels) is removed.  A DICOM series is a subfolder
  of ``--images`` and pairs by folder name.  ``--images`` and ``--labels`` may be the same folder: then
  files with a label suffix are the labels (``brain1_image.nrrd`` + ``brain1_label.nrrd``).
* ``--pairs-csv FILE``: explicit rows ``image,label[,label_ids][,name]`` (paths relative to the CSV);
  the same image may appear on several rows, e.g. one DICOM series with one label file per organ.

Every label id is its own object (``--label-ids all``, the default: each nonzero value present);
``--label-ids 1,2`` picks some, ``--label-ids nonzero`` evaluates the union as one object.
Exit code 0 when every object was evaluated, 1 when a case or label id failed (listed in the table
and in ``summary.json``), 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

from ..errors import InputError, OutputExistsError
from ..io import ITK_SUFFIXES, NIFTI_SUFFIXES, RASTER_SUFFIXES, check_folder_path
from ..metrics import DEFAULT_TOLERANCE_MM
from ..session_options import command_parser, gp_options, session_settings
from .run3d import EvalCase, EvalOptions, format_table, parse_label_ids, run_eval

_IMAGE_TAGS = ("_0000", "_image", "_img")
_LABEL_TAGS = ("_label", "_labels", "_seg", "_mask", "_gt")
_CHANNEL = re.compile(r"_(\d{4})$")


def _suffix(p: Path) -> str:
    name = p.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else p.suffix.lower()


def _readable(p: Path) -> bool:
    if p.name.startswith("."):
        return False
    if p.is_dir():  # a DICOM series
        return any(f.is_file() and not f.name.startswith(".") for f in p.iterdir())
    return _suffix(p) in (*NIFTI_SUFFIXES, *ITK_SUFFIXES, *RASTER_SUFFIXES)


def _stem(p: Path) -> str:
    return p.name if p.is_dir() else p.name[: len(p.name) - len(_suffix(p))]


def _strip(stem: str, tags: tuple[str, ...]) -> str:
    for t in tags:
        if stem.lower().endswith(t):
            return stem[: -len(t)]
    return stem


def _entries(folder: Path, what: str) -> list[Path]:
    if not folder.is_dir():
        raise InputError(f"{what} folder {folder} does not exist")
    return sorted(p for p in folder.iterdir() if _readable(p))


def discover_pairs(images: Path, labels: Path, label_ids="all") -> list[EvalCase]:
    if images.resolve() == labels.resolve():
        files = _entries(images, "images")
        labs = [p for p in files if _strip(_stem(p), _LABEL_TAGS) != _stem(p)]
        imgs = [p for p in files if p not in labs]
    else:
        imgs, labs = _entries(images, "images"), [p for p in _entries(labels, "labels") if p.is_file()]
    by_stem = {_stem(p): p for p in labs}
    by_key = {_strip(_stem(p), _LABEL_TAGS): p for p in labs}
    cases = []
    for img in imgs:
        s = _stem(img)
        lab = by_stem.get(s) or by_key.get(_strip(s, _IMAGE_TAGS))
        if lab is not None:
            cases.append(EvalCase(_strip(s, _IMAGE_TAGS), img, lab, label_ids))
    if not cases:
        raise InputError(f"no image in {images} has a label with a matching name in {labels}")
    return cases


def discover_msd(images: Path, labels: Path | None, label_ids="all") -> list[EvalCase]:
    if (images / "imagesTr").is_dir():
        images, labels = images / "imagesTr", labels or images / "labelsTr"
    if labels is None:
        raise InputError(f"{images} has no imagesTr/ folder; give --labels for the label folder")
    labs = {_stem(p): p for p in _entries(labels, "labels") if p.is_file()}
    cases = []
    for img in _entries(images, "images"):
        s = _stem(img)
        m = _CHANNEL.search(s)
        if m and m.group(1) != "0000":
            continue  # further nnU-Net channels of a case already taken from its _0000 file
        case = s[: m.start()] if m else s
        if case in labs:
            cases.append(EvalCase(case, img, labs[case], label_ids))
    if not cases:
        raise InputError(f"no image in {images} has a label of the same name in {labels}")
    return cases


def read_pairs_csv(path: Path, label_ids="all") -> list[EvalCase]:
    if not path.is_file():
        raise InputError(f"pairs CSV {path} does not exist")
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets start CSVs with a BOM
            reader = csv.DictReader(f)
            cols = {c.strip().lower(): c for c in reader.fieldnames or []}
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise InputError(f"pairs CSV {path} cannot be parsed: {e}") from None
    if not {"image", "label"} <= set(cols):
        raise InputError(f"pairs CSV {path} needs a header with columns image,label[,label_ids][,name]")
    cases = []
    for n, r in enumerate(rows, 2):
        def get(k: str) -> str:
            return (r.get(cols[k]) or "").strip() if k in cols else ""

        if not get("image") or not get("label"):
            raise InputError(f"pairs CSV {path} line {n}: image and label are both needed")
        img, lab = (path.parent / get("image")), (path.parent / get("label"))
        ids = parse_label_ids(get("label_ids")) if get("label_ids") else label_ids
        name = get("name") or f"{_strip(_stem(img), _IMAGE_TAGS)}-{_strip(_stem(lab), _LABEL_TAGS)}"
        cases.append(EvalCase(name, img, lab, ids))
    if not cases:
        raise InputError(f"pairs CSV {path} has no rows")
    return cases


def find_cases(args: argparse.Namespace) -> list[EvalCase]:
    ids = parse_label_ids(args.label_ids)
    if args.pairs_csv:
        return read_pairs_csv(Path(args.pairs_csv), ids)
    if not args.images:
        raise InputError("give --images (and --labels), or --pairs-csv")
    images = Path(args.images)
    layout = args.layout or ("msd" if (images / "imagesTr").is_dir() else "pairs")
    labels = Path(args.labels) if args.labels else None
    if layout == "msd":
        return discover_msd(images, labels, ids)
    if labels is None:
        raise InputError("--layout pairs needs --labels DIR (it may be the same folder as --images)")
    return discover_pairs(images, labels, ids)


def _handler(args: argparse.Namespace) -> int:
    if args.clicks < 1:
        raise InputError(f"--clicks must be 1 or more, got {args.clicks}")
    if args.tolerance < 0:
        raise InputError(f"--tolerance must be 0 mm or more, got {args.tolerance}")
    cases = find_cases(args)
    out = Path(args.out)
    check_folder_path(out, f"results into --out {out}")
    if (out / "summary.json").exists() and not args.overwrite:
        raise OutputExistsError(f"{out} already holds evaluation results (use --overwrite to replace them)")

    options = EvalOptions(n_clicks=args.clicks, tolerance=args.tolerance, **session_settings(args))
    summary = run_eval(cases, out, options, progress=not args.quiet)
    print(format_table(summary))
    print(f"per-case JSON, summary.json, summary.csv and curves.png in {out}")
    return 0 if summary["objects"] and not summary["failures"] else 1


def register(subparsers) -> argparse.ArgumentParser:
    p = command_parser(subparsers, "eval3d", "interactive 3D evaluation with a simulated user (Dice/NSD per click)",
                       __doc__)
    p.add_argument("--images", help="image folder (pairs) or MSD task folder with imagesTr/labelsTr")
    p.add_argument("--labels", help="label folder (pairs; MSD when --images is imagesTr itself)")
    p.add_argument("--layout", choices=("msd", "pairs"), help="folder layout (default: msd if --images has imagesTr)")
    p.add_argument("--pairs-csv", help="CSV with image,label[,label_ids][,name] rows instead of folders")
    p.add_argument("--label-ids", default="all", help="'all' (default), 'nonzero' (union) or a list such as 1,2")
    p.add_argument("--out", required=True, help="output folder for per-case JSON, summary and plot")
    p.add_argument("--clicks", type=int, default=10, help="clicks per object (default 10)")
    p.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_MM,
                   help=f"NSD tolerance in mm (default {DEFAULT_TOLERANCE_MM:g})")

    gp_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_handler)
    return p
