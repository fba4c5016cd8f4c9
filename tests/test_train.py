"""Training: click simulation, losses, and a CPU smoke run with checkpoint, resume and CSV log."""
from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from volseg import Session
from volseg.cli import main
from volseg.errors import InputError
from volseg.features import FilterBank, StackedFeatures, get_extractor
from volseg.features.backbones import load_backbone, normalise_2d, read_checkpoint, rgb_of_input
from volseg.image import Image
from volseg.robot import border_distance, deepest_point, ritm_click
from volseg.train.config import load_config
from volseg.train.loop import learning_rate_factor, stacked_features, train
from volseg.train.losses import bce, normalized_focal, segmentation_loss, soft_dice
from volseg.train.simulate import initial_clicks
from volseg.video.features import frame_extractors

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "train_smoke.yaml"


def box_mask(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[tuple(slice(a, b) for a, b in zip(lo, hi))] = True
    return m


def test_first_click_is_deepest_point():
    obj = box_mask((30, 40), (5, 10), (25, 31))  # 20 x 21 box
    d = border_distance(obj)
    assert obj[deepest_point(obj)] and d[deepest_point(obj)] == d.max() == 10
    pts, labels = initial_clicks(obj, np.random.default_rng(0), max_positive=1, max_negative=0, deepest=1.0)
    assert pts == [deepest_point(obj)] and labels == [1.0]


def test_initial_clicks_random_are_on_the_right_side():
    obj = box_mask((40, 40), (10, 10), (30, 30))
    for seed in range(10):
        pts, labels = initial_clicks(obj, np.random.default_rng(seed), max_positive=3, max_negative=3, deepest=0.0)
        assert labels[0] == 1.0 and len(pts) == len(set(pts))
        for p, y in zip(pts, labels):
            assert obj[p] == (y > 0)


def test_error_clicks_follow_the_errors():
    # after the initial clicks, training clicks where the benchmark robot would
    obj = box_mask((30, 30), (5, 5), (20, 20))
    c = ritm_click(obj, np.zeros_like(obj))
    assert c.positive and obj[c.voxel()]  # empty prediction: positive click inside the object
    pred = obj | box_mask((30, 30), (22, 22), (29, 29))
    c = ritm_click(obj, pred)
    assert not c.positive and pred[c.voxel()] and not obj[c.voxel()]  # false blob: negative click inside it
    assert ritm_click(obj, obj) is None
    vol = box_mask((12, 14, 10), (3, 3, 3), (9, 10, 8))
    c = ritm_click(vol, np.zeros_like(vol))
    assert c.positive and vol[c.voxel()] and len(c.voxel()) == 3


def test_losses():
    t = torch.tensor([1.0, 0.0, 1.0, 0.0])
    good, bad = torch.tensor([0.99, 0.01, 0.98, 0.02]), torch.tensor([0.2, 0.8, 0.3, 0.7])
    for fn in (bce, normalized_focal, soft_dice):
        assert fn(good, t) < fn(bad, t)
    assert torch.isfinite(segmentation_loss(bad, t, kind="bce"))
    with pytest.raises(ValueError):
        segmentation_loss(bad, t, kind="hinge")


def test_config_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(InputError, match="unknown training config"):
        load_config({"modle": {}})
    # every numeric setting is checked, named with its section: a run that would train nothing (or the
    # wrong way) does not start
    for bad, message in [({"optim": {"lr": -1}}, "optim.lr: -1 is not a number above 0"),
                         ({"optim": {"batch_size": 0}}, "optim.batch_size: 0 is not a whole number at least 1"),
                         ({"optim": {"steps": 2.5}}, "optim.steps: 2.5 is not a whole number"),
                         ({"data": {"val_fraction": 0.9}}, "data.val_fraction: 0.9 is not a number at least 0.0 "
                                                           "and at most 0.5"),
                         ({"clicks": {"deepest": "half"}}, "clicks.deepest: 'half'"),
                         ({"gp": {"noise": True}}, "gp.noise: True"),
                         ({"loss": {"kind": "hinge"}}, "loss.kind: 'hinge'; use nfl or bce"),
                         ({"optim": "fast"}, "section optim must be a mapping")]:
        with pytest.raises(InputError, match=re.escape(message)):
            load_config(bad)
    (tmp_path / "list.yaml").write_text("[1, 2]\n")
    with pytest.raises(InputError, match="must be a mapping of sections"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("optim: {lr: [\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")
    assert main(["train", "--config", str(SMOKE), "--steps", "-3", "--out", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()


def test_smoke_train_checkpoint_resume_log(tmp_path):
    out = tmp_path / "run"
    path = train(SMOKE, out, quiet=True)
    assert path == out / "model.ckpt" and (out / "last.ckpt").is_file()
    ck = read_checkpoint(path)
    assert ck["format"] == "volseg-backbone/1" and ck["config"]["name"] == "smoke"
    assert len(ck["manifest_sha256"]) == 64 and ck["metrics"]["steps"] == 4 and "val_iou_1" in ck["metrics"]
    assert set(ck["gp_config"]) >= {"feature_lengthscale", "spatial_fraction", "outputscale", "noise"}
    assert "optimizer" not in ck  # the shipped file holds weights only
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4]
    # resume continues the step count and appends to the log
    train(SMOKE, out, resume=out / "last.ckpt", max_steps=6, quiet=True)
    assert read_checkpoint(out / "last.ckpt")["step"] == 6
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert [int(r["step"]) for r in rows] == [2, 4, 6]
    # ... on the schedule of its new length, from the config's rates (not the saved optimiser's last ones)
    assert float(rows[-1]["lr"]) == pytest.approx(0.003 * learning_rate_factor(5, 6, 0))
    ex = load_backbone(path)
    assert ex.features.__self__ is ex and ex.gp_config["noise"] == pytest.approx(1e-3)


def test_init_trains_longer_from_a_finished_checkpoint(tmp_path):
    """--init: the new run starts from the finished weights and GP settings, with a fresh step count."""
    first = train(SMOKE, tmp_path / "a", quiet=True)
    before = read_checkpoint(first)
    second = train(SMOKE, tmp_path / "b", init=first, max_steps=2, quiet=True)
    after = read_checkpoint(second)
    assert after["metrics"]["steps"] == 2
    assert after["metrics"]["initialised_from"]["steps"] == 4
    assert after["manifest_sha256"] == before["manifest_sha256"]
    # two steps move the weights a little from where they started, not from a fresh initialisation
    fresh = read_checkpoint(train(SMOKE, tmp_path / "c", max_steps=2, quiet=True))
    key = next(iter(before["state_dict"]))
    moved = (after["state_dict"][key] - before["state_dict"][key]).abs().max()
    assert moved < (fresh["state_dict"][key] - before["state_dict"][key]).abs().max()
    with pytest.raises(InputError, match="not both"):
        train(SMOKE, tmp_path / "d", init=first, resume=tmp_path / "a" / "last.ckpt", quiet=True)
    other = {**load_config(SMOKE)[0]}
    other["model"] = {**other["model"], "embed_dim": int(other["model"].get("embed_dim", 16)) + 1}
    with pytest.raises(InputError, match="network differs"):
        train(other, tmp_path / "e", init=first, quiet=True)


def test_a_network_trains_through_the_product_kernel_with_the_filter_bank(tmp_path):
    """model.stack: training sees the filter bank's columns exactly as the inference stack scales them, and the
    checkpoint brings the bank along (its GP settings were learned for the product kernel)."""
    cfg = load_config(SMOKE)[0]
    cfg["model"] = {**cfg["model"], "stack": ["filterbank"]}
    rgb = (np.random.default_rng(0).random((24, 32, 3)) * 255).astype(np.uint8)
    x = normalise_2d(rgb)
    assert np.array_equal(rgb_of_input(x), rgb)
    columns = stacked_features(x, cfg).numpy()
    bank = FilterBank().features(Image(rgb)).reshape(-1, columns.shape[1])
    np.testing.assert_allclose(columns, bank / np.sqrt(bank.shape[1]), rtol=1e-6)
    assert stacked_features(x, load_config(SMOKE)[0]) is None

    path = train(cfg, tmp_path / "s", quiet=True)
    ex = get_extractor(str(path))
    assert isinstance(ex, StackedFeatures) and [p.name for p in ex.parts][1:] == ["filterbank"]
    assert [p.name for p in get_extractor(f"{path}+filterbank").parts] == [p.name for p in ex.parts]  # not twice
    bank_too, learned = frame_extractors(str(path))  # video: its own filter bank, beside the network
    assert bank_too and [p.name for p in learned] == [ex.parts[0].name]
    feats = ex.features(Image(rgb))
    np.testing.assert_allclose(feats.reshape(-1, feats.shape[-1])[:, -bank.shape[1]:], columns, rtol=1e-5)
    session = Session(features=str(path))
    session.set_image(rgb)
    session.add_click((12, 16))
    assert session.mask()[12, 16] == 1
    with pytest.raises(InputError, match="model.stack"):
        load_config({**cfg, "model": {**cfg["model"], "stack": ["learned2d"]}})


def test_smoke_train_3d(tmp_path):
    cfg = {"name": "smoke3d", "model": {"name": "UNet", "spatial_dims": 3, "in_channels": 1, "embed_dim": 3,
                                        "channels": [4, 8], "strides": [2], "num_res_units": 0,
                                        "roi_size": [16, 16, 16]},
           "data": {"synthetic": {"n": 4}, "size": [16, 16, 16], "augment": False},
           "clicks": {"iterative": 1}, "optim": {"batch_size": 1, "steps": 2, "warmup": 0},
           "log": {"every": 1, "checkpoint_every": 10, "val_images": 1}}
    path = train(cfg, tmp_path / "r3", quiet=True)
    ex = load_backbone(path)
    vol = np.random.default_rng(0).random((20, 18, 16)).astype(np.float32)
    from volseg.image import Image

    assert ex.features(Image.from_array(vol), budget=2 ** 30).shape == (20, 18, 16, 3)


def test_cli_registers_train():
    from volseg.train.cli import register

    p = argparse.ArgumentParser()
    register(p.add_subparsers(dest="command"))
    args = p.parse_args(["train", "--config", "c.yaml", "--steps", "3"])
    assert args.command == "train" and args.steps == 3 and callable(args.func)


def test_heldout_pairs_script_writes_the_validation_split(tmp_path):
    """data_scripts/heldout_pairs.py lists exactly the cases training holds out, as an eval3d pairs CSV."""
    import subprocess
    import sys

    import nibabel as nib
    import yaml

    from volseg.train.data import find_pairs, split

    root = tmp_path / "hippo"
    for sub in ("images", "labels"):
        (root / sub).mkdir(parents=True)
    for i in range(12):
        vol = np.zeros((6, 7, 5), np.uint8)
        vol[2:4, 2:5, 1:3] = 1
        for sub in ("images", "labels"):
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(root / sub / f"case_{i:03d}.nii.gz"))
    cfg = tmp_path / "train.yaml"
    cfg.write_text(yaml.safe_dump({"model": {"spatial_dims": 3}, "data": {"roots": [str(root)], "val_fraction": 0.25}}))
    out = tmp_path / "held.csv"
    script = Path(__file__).resolve().parents[1] / "data_scripts" / "heldout_pairs.py"
    subprocess.run([sys.executable, str(script), str(cfg), str(out)], check=True, capture_output=True)
    rows = out.read_text().splitlines()
    _, held = split(find_pairs(root, 3), 0.25)
    assert rows[0] == "image,label" and len(rows) == 1 + len(held) == 4
    assert [r.split(",")[0] for r in rows[1:]] == [str(p.image.resolve()) for p in held]


def test_two_cpu_ranks_under_torchrun(tmp_path):
    """CPU data parallelism (a GPU machine's many cores): two gloo ranks train one model, rank 0 writes it.
    The backend follows the config's device, so this runs the same where CUDA is present."""
    import os
    import signal
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # torchrun's port 0 is not "any free port": its ranks never meet
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SMOKE.parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
           "-m", "volseg", "train", "--config", str(SMOKE), "--out", str(tmp_path / "ddp"), "--steps", "2", "--quiet"]
    # its own process group: a hang is killed with both ranks, not left running behind the test
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, err[-2000:]
    ck = read_checkpoint(tmp_path / "ddp" / "model.ckpt")
    assert ck["metrics"]["world_size"] == 2 and ck["metrics"]["steps"] == 2


def test_every_training_config_in_configs_loads():
    """The training configs the README and model card name are valid (sections, stack, dimensions)."""
    paths = sorted(SMOKE.parent.glob("train_*.yaml"))
    assert {"train_2d.yaml", "train_2d_stack.yaml", "train_3d.yaml"} <= {p.name for p in paths}
    for path in paths:
        cfg, _ = load_config(path)
        assert cfg["model"].get("stack") in (None, ["filterbank"])
