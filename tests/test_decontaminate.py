"""`volseg train --exclude-like`: training images that copy evaluation images are found and refused."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

from volseg.errors import InputError
from volseg.train.decontaminate import check_no_overlap, find_overlaps, image_files


def photo(seed: int, shape=(120, 180)) -> np.ndarray:
    """A smooth random 'photograph': distinct seeds give uncorrelated thumbnails."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    img = ndi.gaussian_filter(rng.normal(size=(*shape, 3)), (6, 6, 0))
    img = (img - img.min()) / (np.ptp(img) + 1e-9)
    return (img * 255).astype(np.uint8)


def save(path, arr, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


@pytest.fixture
def folders(tmp_path):
    dev = tmp_path / "dev" / "images"
    train = tmp_path / "train" / "images"
    for i in range(4):
        save(dev / f"d{i}.png", photo(i))
    for i in range(10, 16):
        save(train / f"t{i}.jpg", photo(i), quality=92)
    return tmp_path, dev, train


def test_clean_training_set_passes(folders):
    _, dev, train = folders
    assert find_overlaps(image_files(train), image_files(dev)) == []
    check_no_overlap(image_files(train), [dev])  # raises nothing


def test_identical_resized_and_rotated_copies_are_found(folders):
    _, dev, train = folders
    (train / "same.png").write_bytes((dev / "d0.png").read_bytes())
    save(train / "smaller.jpg", np.asarray(Image.fromarray(photo(1)).resize((120, 80))), quality=80)
    save(train / "rotated.png", np.rot90(photo(2)).copy())
    found = {o.train.name: o for o in find_overlaps(image_files(train), image_files(dev))}
    assert set(found) == {"same.png", "smaller.jpg", "rotated.png"}
    assert found["same.png"].how == "identical bytes" and found["same.png"].excluded.name == "d0.png"
    assert found["smaller.jpg"].excluded.name == "d1.png" and found["rotated.png"].excluded.name == "d2.png"
    with pytest.raises(InputError, match="3 training images copy excluded images.*rotated.png"):
        check_no_overlap(image_files(train), [dev])


def test_train_cli_refuses_before_training(folders):
    root, dev, train = folders
    save(train / "copy.png", photo(3))
    masks = root / "train" / "masks"
    for p in image_files(train):  # only images with a mask are training pairs, so every one gets a mask
        m = np.zeros((120, 180), np.uint8)
        m[30:90, 40:140] = 255
        save(masks / f"{p.stem}.png", m)
    cfg = root / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"name": "t", "data": {"roots": [str(root / "train")]},
                                   "optim": {"steps": 1}}))
    r = subprocess.run([sys.executable, "-m", "volseg", "train", "--config", str(cfg), "--out", str(root / "run"),
                        "--exclude-like", str(dev)], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().count("\n") == 0 and "copy.png" in r.stderr and "d3.png" in r.stderr
    assert not (root / "run").exists()
