"""3D robot, metrics and the eval3d CLI on generated volumes whose answers are known."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pytest

from volseg.errors import InputError
from volseg.eval.run3d import EvalOptions, evaluate_object, objects_in, parse_label_ids
from volseg.image import Image
from volseg.metrics import auc, dice, nsd, surface
from volseg.robot import deepest_point, largest_component_click


def ellipsoid(shape, centre, radius_mm, spacing):
    grid = np.indices(shape).astype(float)
    d2 = sum(((g - c) * s / radius_mm) ** 2 for g, c, s in zip(grid, centre, spacing))
    return d2 <= 1.0


# -- robot ------------------------------------------------------------------------------------

def test_first_click_is_sphere_centre_with_anisotropic_spacing():
    spacing = (0.5, 0.8, 2.5)
    gt = ellipsoid((61, 41, 15), (30, 20, 7), 10.0, spacing)  # a 10 mm ball, off-centre in voxels
    c = largest_component_click(gt, np.zeros_like(gt), spacing)
    assert c.positive and c.voxel() == (30, 20, 7)


def test_deepest_point_measures_in_mm():
    # A: 12x12x3 voxels at 1x1x5 mm (12x12x15 mm, 6 mm deep); B: 9x9x9 voxels (9x9x45 mm, 4.5 mm deep).
    # In voxel units B is deeper (4.5 vs 1.5), in millimetres A is.
    m = np.zeros((40, 20, 12), bool)
    m[2:14, 2:14, 2:5] = True
    m[25:34, 5:14, 1:10] = True
    assert deepest_point(m, (1, 1, 5), central=True)[0] < 20
    assert deepest_point(m, central=True)[0] > 20


def test_array_border_counts_as_boundary():
    m = np.zeros((30, 10), bool)
    m[:, :] = True  # the whole array: the deepest point is its centre, not a corner
    assert deepest_point(m, central=True) in ((14, 4), (14, 5), (15, 4), (15, 5))


def test_next_click_targets_largest_error_with_sign():
    gt = np.zeros((40, 40, 20), bool)
    gt[5:35, 5:35, 5:15] = True
    pred = gt.copy()
    pred[5:35, 5:15, 5:15] = False            # missed slab: 30*10*10 voxels
    pred[36:39, 36:39, 1:4] = True            # small false blob
    c = largest_component_click(gt, pred, (1, 1, 1))
    assert c.positive and gt[c.voxel()] and not pred[c.voxel()]
    assert c.voxel()[1] in (9, 10)            # middle of the missed slab
    pred2 = gt.copy()
    pred2[0:40, 36:40, 0:20] = True           # large false region outside the object
    c2 = largest_component_click(gt, pred2, (1, 1, 1))
    assert not c2.positive and not gt[c2.voxel()] and pred2[c2.voxel()]


def test_next_click_none_when_perfect_and_ignore_region():
    gt = np.zeros((20, 20), bool)
    gt[5:15, 5:15] = True
    assert largest_component_click(gt, gt.copy(), (1, 1)) is None
    pred = gt.copy()
    pred[0:3, :] = True
    ignore = np.zeros_like(gt)
    ignore[0:3, :] = True
    assert largest_component_click(gt, pred, (1, 1), ignore=ignore) is None


def test_robot_works_in_2d():
    gt = ellipsoid((50, 70), (20, 40), 12.0, (1.0, 1.0))
    c = largest_component_click(gt, np.zeros_like(gt))
    assert c.voxel() == (20, 40) and len(c.position) == 2


# -- metrics ----------------------------------------------------------------------------------

def test_dice_known_values():
    a = np.zeros((10, 10, 10), bool)
    a[:, :, :5] = True
    b = np.zeros_like(a)
    b[:, :, 2:7] = True
    assert dice(a, a) == 1.0
    assert dice(a, b) == pytest.approx(2 * 300 / 1000)
    assert dice(a, ~a) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0


def test_nsd_shifted_cube_known_value():
    # 10^3 cube shifted 2 voxels along an axis with 2 mm spacing (4 mm).  At 3 mm tolerance the faces
    # 4 mm apart fail (100 voxels) plus the 4 central voxels of the opposite face (4 mm from every
    # surface); 384 of 488 surface voxels per mask pass.
    g = np.zeros((32, 30, 30), bool)
    g[10:20, 10:20, 10:20] = True
    p = np.zeros_like(g)
    p[12:22, 10:20, 10:20] = True
    assert surface(g).sum() == 488
    assert nsd(g, p, (2, 1, 1), 3.0) == pytest.approx(384 / 488)
    assert nsd(g, p, (2, 1, 1), 4.0) == 1.0
    assert nsd(g, p, (1, 1, 1), 2.0) == 1.0  # the same shift is only 2 mm at 1 mm spacing


def test_nsd_identical_and_empty():
    g = ellipsoid((20, 20, 20), (10, 10, 10), 6, (1, 1, 1))
    assert nsd(g, g, (1, 1, 1), 0.0) == 1.0
    z = np.zeros_like(g)
    assert nsd(z, z) == 1.0
    assert nsd(g, z) == 0.0 and nsd(z, g) == 0.0


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_nsd_matches_monai_on_random_blobs():
    torch = pytest.importorskip("torch")
    from monai.metrics import compute_surface_dice

    rng = np.random.default_rng(1)
    from scipy import ndimage

    g = ndimage.gaussian_filter(rng.random((30, 28, 12)), 2) > 0.5
    p = ndimage.gaussian_filter(rng.random((30, 28, 12)), 2) > 0.52
    spacing = (0.7, 0.9, 2.5)
    def onehot(m):
        return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))
    ref = compute_surface_dice(onehot(p), onehot(g), [1.5], spacing=list(spacing)).item()
    assert nsd(g, p, spacing, 1.5) == pytest.approx(ref, abs=1e-6)


def test_auc():
    assert auc([0.5, 1.0]) == pytest.approx(0.75)
    assert auc([0.8] * 10) == pytest.approx(0.8)
    assert auc([0.3]) == 0.3
    assert auc([0.0, 0.5, 1.0, 1.0]) == pytest.approx((0.25 + 0.75 + 1.0) / 3)


# -- evaluation loop --------------------------------------------------------------------------

class OracleSession:
    """Answers with the whole object once it has a positive click inside it."""

    def __init__(self, gt):
        self.gt, self.pred = gt, np.zeros_like(gt)

    def set_image(self, image):
        pass

    def add_click(self, position, positive=True, object=1):
        if positive and self.gt[tuple(int(round(p)) for p in position)]:
            self.pred = self.gt.copy()
        return 0.0

    def mask(self):
        return self.pred.astype(np.uint8)


def test_evaluate_object_stops_when_perfect_and_pads_curve():
    gt = ellipsoid((20, 20, 10), (10, 10, 5), 5, (1, 1, 1))
    img = Image.from_array(gt.astype(np.float32))
    r = evaluate_object(img, gt, EvalOptions(n_clicks=5, session_factory=lambda: OracleSession(gt)))
    assert r["dice"] == [1.0] * 5 and r["nsd"] == [1.0] * 5
    assert len(r["clicks"]) == 1 and len(r["seconds_per_click"]) == 1 and r["auc_dice"] == 1.0


def test_label_ids():
    lab = np.array([[0, 1, 2], [2, 0, 5]])
    assert [i for i, _ in objects_in(lab, "all")] == [1, 2, 5]
    assert objects_in(lab, "nonzero")[0][1].sum() == 4
    assert parse_label_ids("1,2") == [1, 2] and parse_label_ids(None) == "all"
    with pytest.raises(InputError):
        parse_label_ids("liver")


# -- CLI end to end (real Session, tiny volumes) ---------------------------------------------

def _case(seed, shape=(28, 26, 12), spacing=(1.0, 1.0, 2.0)):
    rng = np.random.default_rng(seed)
    gt = ellipsoid(shape, (14 + seed, 12, 6), 7.0, spacing)
    labels = gt.astype(np.uint8)
    labels[2:6, 2:6, 1:4] = 2  # a second structure, evaluated as its own object
    vol = (100.0 * gt + 50.0 * (labels == 2) + rng.normal(0, 10, shape)).astype(np.float32)
    return Image.from_array(vol, spacing=spacing), labels


def write_dicom_series(image: Image, folder: Path) -> None:
    """A minimal CT series (one file per slice along the last axis) that GDCM can sort by position."""
    import SimpleITK as sitk

    folder.mkdir(parents=True)
    vol = sitk.GetImageFromArray(np.transpose(image.array[..., 0], (2, 1, 0)).astype(np.int16))
    vol.SetSpacing(image.spacing)
    uid = f"1.2.826.0.1.3680043.2.1125.{int(time.time() * 1000)}"
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    for k in range(vol.GetDepth()):
        s = vol[:, :, k]
        tags = {"0008|0060": "CT", "0020|000d": uid, "0020|000e": uid + ".1", "0020|0037": "1\\0\\0\\0\\1\\0",
                "0020|0032": "\\".join(map(str, vol.TransformIndexToPhysicalPoint((0, 0, k)))),
                "0020|0013": str(k + 1), "0028|0030": f"{image.spacing[1]}\\{image.spacing[0]}",
                "0018|0050": str(image.spacing[2])}
        for tag, value in tags.items():
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{k:03d}.dcm"))
        writer.Execute(s)


def _run_cli(argv: list[str]) -> int:
    from volseg.eval import cli3d

    parser = argparse.ArgumentParser(prog="volseg")
    cli3d.register(parser.add_subparsers())
    args = parser.parse_args(["eval3d", *argv])
    return args.func(args)


def test_eval3d_cli_pairs_layout_nifti_nrrd_dicom(tmp_path, capsys):
    from volseg.io import read_image, write_mask

    images, labels = tmp_path / "images", tmp_path / "labels"
    img0, lab0 = _case(0)
    img1, lab1 = _case(1)
    images.mkdir()
    _write_volume(img0, images / "a_0000.nii.gz")
    write_mask(lab0, img0, labels / "a.nii.gz")
    write_dicom_series(img1, images / "b")
    dicom = read_image(images / "b")
    write_mask(lab1, dicom, labels / "b_seg.nrrd")
    out = tmp_path / "out"
    rc = _run_cli(["--images", str(images), "--labels", str(labels), "--layout", "pairs", "--out", str(out),
                   "--clicks", "3", "--label-ids", "1", "--quiet"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [(o["name"], o["label_id"]) for o in summary["objects"]] == [("a", 1), ("b", 1)]
    assert summary["checkpoints"] == [1, 3] and not summary["failures"]
    case = json.loads((out / "cases" / "a_label1.json").read_text())
    assert len(case["dice"]) == 3 and len(case["nsd"]) == 3 and case["seconds_per_click"]
    assert case["dice"][0] > 0 and case["spacing"] == [1.0, 1.0, 2.0]
    assert (out / "curves.png").stat().st_size > 1000 and (out / "summary.csv").is_file()
    assert "Dice@3" in capsys.readouterr().out
    with pytest.raises(Exception, match="already holds"):
        _run_cli(["--images", str(images), "--labels", str(labels), "--out", str(out), "--quiet"])


def test_eval3d_cli_msd_layout_each_label_its_own_object(tmp_path):
    from volseg.io import write_mask

    task = tmp_path / "Task99_Tiny"
    (task / "imagesTr").mkdir(parents=True)
    img, lab = _case(2)
    _write_volume(img, task / "imagesTr" / "tiny_001.nii.gz")
    write_mask(lab, img, task / "labelsTr" / "tiny_001.nii.gz")
    (task / "imagesTr" / "._tiny_001.nii.gz").write_bytes(b"macOS resource fork junk")
    out = tmp_path / "out"
    assert _run_cli(["--images", str(task), "--out", str(out), "--clicks", "2", "--quiet"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [o["label_id"] for o in summary["objects"]] == [1, 2]
    # a label id that is absent is reported as a failure, exit code 1
    assert _run_cli(["--images", str(task), "--out", str(out), "--clicks", "1", "--label-ids", "1,7",
                     "--overwrite", "--quiet"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert "label id 7 does not occur" in summary["failures"][0]["reason"]


def test_eval3d_pairs_csv_shared_image(tmp_path):
    from volseg.eval.cli3d import read_pairs_csv
    from volseg.io import write_mask

    img, lab = _case(0)
    _write_volume(img, tmp_path / "ct.nii.gz")
    write_mask((lab == 1).astype(np.uint8) * 3, img, tmp_path / "organ_seg.nrrd")  # value 3: nonzero is the object
    write_mask((lab == 2).astype(np.uint8), img, tmp_path / "small_seg.nrrd")
    (tmp_path / "pairs.csv").write_text("image,label,name\nct.nii.gz,organ_seg.nrrd,organ\n"
                                        "ct.nii.gz,small_seg.nrrd,small\n")
    out = tmp_path / "out"
    assert _run_cli(["--pairs-csv", str(tmp_path / "pairs.csv"), "--out", str(out), "--clicks", "1",
                     "--label-ids", "nonzero", "--quiet"]) == 0
    names = [o["name"] for o in json.loads((out / "summary.json").read_text())["objects"]]
    assert names == ["organ", "small"]
    # written by a spreadsheet (a byte-order mark first), or in another encoding than UTF-8
    (tmp_path / "excel.csv").write_bytes("image,label,name\nct.nii.gz,small_seg.nrrd,small\n".encode("utf-8-sig"))
    assert [c.name for c in read_pairs_csv(tmp_path / "excel.csv")] == ["small"]
    (tmp_path / "latin.csv").write_bytes("image,label\nct\xe9.nii.gz,small_seg.nrrd\n".encode("latin-1"))
    with pytest.raises(InputError, match="cannot be parsed"):
        read_pairs_csv(tmp_path / "latin.csv")


def _write_volume(image: Image, path: Path) -> None:
    from volseg.io import write_probability

    write_probability(image.array[..., 0], image, path)  # any float volume, written on image's grid


# -- a reference label map on another grid of the same world box ------------------------------

def _flipped(img: Image, labels: np.ndarray) -> Image:
    """The label map stored with its second axis reversed (direction diag(1, -1, 1)), as TotalSegmentator's
    NIfTI is next to its DICOM series: the same world box, another array order."""
    last = np.asarray(img.index_to_world([[0, img.shape[1] - 1, 0]]))[0]
    return Image.from_array(labels[:, ::-1, :].copy(), spacing=img.spacing, origin=tuple(last),
                            direction=np.diag([1.0, -1.0, 1.0]))


def test_label_map_on_another_grid_is_resampled_by_world_geometry(tmp_path):
    from volseg.errors import GeometryError
    from volseg.io import read_mask, write_mask

    img, lab = _case(3)
    flipped = _flipped(img, lab)
    write_mask(flipped.array[..., 0], flipped, tmp_path / "seg.nii.gz")
    with pytest.raises(GeometryError):
        read_mask(tmp_path / "seg.nii.gz", like=img)  # a prior or a mask to refine must be on the grid
    np.testing.assert_array_equal(read_mask(tmp_path / "seg.nii.gz", like=img, resample=True), lab)
    far = Image.from_array(lab, spacing=img.spacing, origin=(500.0, 0.0, 0.0))
    write_mask(lab, far, tmp_path / "far.nii.gz")
    with pytest.raises(GeometryError, match="does not overlap"):
        read_mask(tmp_path / "far.nii.gz", like=img, resample=True)


def test_eval3d_resamples_a_flipped_label_map_and_fails_one_from_elsewhere(tmp_path):
    from volseg.io import write_mask

    img, lab = _case(4)
    _write_volume(img, tmp_path / "img.nii.gz")
    flipped = _flipped(img, lab)
    write_mask(flipped.array[..., 0], flipped, tmp_path / "seg.nii.gz")
    far = Image.from_array(lab, spacing=img.spacing, origin=(0.0, 0.0, -900.0))
    write_mask(lab, far, tmp_path / "far.nii.gz")
    (tmp_path / "pairs.csv").write_text("image,label,label_ids,name\nimg.nii.gz,seg.nii.gz,1,ok\n"
                                        "img.nii.gz,far.nii.gz,1,elsewhere\n")
    out = tmp_path / "out"
    assert _run_cli(["--pairs-csv", str(tmp_path / "pairs.csv"), "--out", str(out), "--clicks", "2", "--quiet"]) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [o["name"] for o in summary["objects"]] == ["ok"]
    assert summary["objects"][0]["voxels"] == int((lab == 1).sum())
    assert [f["name"] for f in summary["failures"]] == ["elsewhere"]
    assert "does not overlap" in summary["failures"][0]["reason"]
