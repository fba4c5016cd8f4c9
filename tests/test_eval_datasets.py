"""Readers of the six 2D benchmark layouts, on tiny generated folders."""
import cv2
import numpy as np
import pytest
from PIL import Image as PILImage
from scipy.io import savemat

from volseg.errors import InputError
from volseg.eval.datasets import IGNORE, dataset_name, iter_samples, load_samples

H, W = 12, 16


def rgb(seed=0):
    return np.random.default_rng(seed).integers(0, 255, (H, W, 3), dtype=np.uint8)


def write_rgb(path, img):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img[..., ::-1].copy())


def write_grey(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr.astype(np.uint8))


def two_instances():
    lab = np.zeros((H, W), np.uint8)
    lab[1:5, 1:5] = 1
    lab[6:11, 8:14] = 2
    return lab


def test_grabcut_layout_ignore_band(tmp_path):
    m = np.zeros((H, W), np.uint8)
    m[3:9, 4:12] = 255
    m[2, 4:12] = 128  # boundary band
    write_rgb(tmp_path / "data_GT" / "cat.jpg", rgb())
    write_grey(tmp_path / "boundary_GT" / "cat.bmp", m)
    (s,) = load_samples("GrabCut", tmp_path)
    assert s.id == "cat"
    assert s.image.shape == (H, W, 3) and s.image.dtype == np.uint8
    gt = s.gt
    assert (gt == 1).sum() == 48 and (gt == IGNORE).sum() == 8 and set(np.unique(gt)) == {IGNORE, 0, 1}


def test_berkeley_layout_pairs_by_stem_including_a_b_suffixes(tmp_path):
    m = np.zeros((H, W), np.uint8)
    m[2:6, 2:6] = 255
    for stem in ("189011", "189011a", "189011b"):
        write_rgb(tmp_path / "images" / f"{stem}.jpg", rgb())
        write_grey(tmp_path / "masks" / f"{stem}.png", m)
    grey = np.full((H, W), 90, np.uint8)
    write_grey(tmp_path / "images" / "42.png", grey)  # a grey image still comes back as RGB
    write_grey(tmp_path / "masks" / "42.png", m)
    samples = load_samples("berkeley", tmp_path)
    assert [s.id for s in samples] == ["189011", "189011a", "189011b", "42"]
    assert samples[3].image.shape == (H, W, 3)
    assert samples[0].gt.sum() == 16 and samples[0].gt.dtype == np.int8
    assert [s.id for s in load_samples("Berkeley", tmp_path, max_instances=2)] == ["189011", "189011a"]


@pytest.mark.parametrize("name", ["DAVIS", "COCO_MVal"])
def test_davis_and_coco_mval_layouts(tmp_path, name):
    m = np.zeros((H, W, 3), np.uint8)
    m[2:6, 2:6] = (255, 255, 255)
    m[8:10, 8:10] = (0, 0, 128)  # any non-zero channel is object
    write_rgb(tmp_path / "img" / "airplane00_0001.jpg", rgb())
    write_rgb(tmp_path / "gt" / "airplane00_0001.png", m)
    (s,) = load_samples(name, tmp_path)
    assert s.id == "airplane00_0001" and s.gt.sum() == 20


def test_sbd_one_sample_per_instance(tmp_path):
    write_rgb(tmp_path / "img" / "2008_000001.jpg", rgb())
    write_rgb(tmp_path / "img" / "2008_000002.jpg", rgb(1))
    (tmp_path / "inst").mkdir()
    lab = two_instances()
    for stem, seg in (("2008_000001", lab), ("2008_000002", (lab == 2).astype(np.uint8) * 3)):
        savemat(tmp_path / "inst" / f"{stem}.mat",
                {"GTinst": {"Segmentation": seg, "Boundaries": np.zeros((1, 1)), "Categories": np.array([[15], [7]])}})
    (tmp_path / "val.txt").write_text("2008_000001\n2008_000002\n")
    samples = load_samples("sbd", tmp_path)
    assert [s.id for s in samples] == ["2008_000001_1", "2008_000001_2", "2008_000002_3"]
    assert samples[0].gt.sum() == 16 and samples[1].gt.sum() == 30  # the other instance is background
    assert samples[2].gt.sum() == 30
    assert (samples[0].gt[lab == 2] == 0).all()


def test_pascalvoc_palette_instances_and_ignored_border(tmp_path):
    write_rgb(tmp_path / "JPEGImages" / "2007_000033.jpg", rgb())
    write_rgb(tmp_path / "JPEGImages" / "2007_000099.jpg", rgb(2))
    lab = two_instances()
    lab[0, :] = 255  # VOC's "void" outline
    pal = PILImage.fromarray(lab, mode="P")
    pal.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (3 * 252) + [224, 224, 192])
    (tmp_path / "SegmentationObject").mkdir()
    pal.save(tmp_path / "SegmentationObject" / "2007_000033.png")
    pal.save(tmp_path / "SegmentationObject" / "2007_000099.png")
    lst = tmp_path / "ImageSets" / "Segmentation"
    lst.mkdir(parents=True)
    (lst / "val.txt").write_text("2007_000033\n")  # the split list wins over the folder content
    samples = load_samples("PascalVOC", tmp_path)
    assert [s.id for s in samples] == ["2007_000033_1", "2007_000033_2"]
    gt = samples[1].gt
    assert (gt == 1).sum() == 30 and (gt == IGNORE).sum() == W and (gt[1:5, 1:5] == 0).all()
    with pytest.raises(InputError, match="split list .*train.txt does not exist"):
        load_samples("PascalVOC", tmp_path, split="train")
    (lst / "val.txt").unlink()
    assert len(load_samples("PascalVOC", tmp_path)) == 4  # no list at all: every mask in the folder


def test_wrong_root_and_layout_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_samples("Berkeley", tmp_path / "nowhere")
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(InputError, match=r"does not look like a GrabCut dataset.*data_GT/.*found images/, masks/"):
        load_samples("GrabCut", tmp_path)
    with pytest.raises(InputError, match="contains no images"):
        load_samples("Berkeley", tmp_path)
    write_rgb(tmp_path / "images" / "lonely.jpg", rgb())
    with pytest.raises(InputError, match="no mask .* for image.* lonely.jpg"):
        load_samples("Berkeley", tmp_path)
    with pytest.raises(InputError, match="unknown dataset 'berkley'"):
        load_samples("berkley", tmp_path)


def test_sbd_missing_mat_is_a_clear_error(tmp_path):
    write_rgb(tmp_path / "img" / "a.jpg", rgb())
    (tmp_path / "inst").mkdir()
    (tmp_path / "val.txt").write_text("a\n")
    with pytest.raises(InputError, match="instance file .*a.mat does not exist"):
        load_samples("SBD", tmp_path)


def test_dataset_names():
    assert dataset_name("coco-mval") == "COCO_MVal"
    assert dataset_name("pascalvoc") == "PascalVOC"
    assert dataset_name("GRABCUT") == "GrabCut"


def test_samples_are_lazy(tmp_path):
    m = np.zeros((H, W), np.uint8)
    m[2:6, 2:6] = 255
    for i in range(3):
        write_rgb(tmp_path / "images" / f"{i}.jpg", rgb(i))
        write_grey(tmp_path / "masks" / f"{i}.png", m)
    it = iter_samples("Berkeley", tmp_path)
    assert next(it).id == "0"


def _dev_berkeley():
    import os
    from pathlib import Path

    root = Path(os.environ.get("VOLSEG_DEV_DATA",
                               Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "dev"))
    root = root / "2d" / "berkeley"
    if not root.is_dir():
        pytest.skip(f"dev data not found at {root}")
    return root


@pytest.mark.devdata
def test_dev_berkeley_has_100_instances():
    samples = load_samples("Berkeley", _dev_berkeley())
    assert len(samples) == 100
    assert {"189011a", "189011b", "239007a"} <= {s.id for s in samples}
    for s in samples[:3]:
        img, gt = s.image, s.gt
        assert img.shape[:2] == gt.shape and img.shape[2] == 3
        assert set(np.unique(gt)) <= {0, 1} and gt.any()
