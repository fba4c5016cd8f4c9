"""`volseg eval` end to end on a tiny generated Berkeley-layout dataset; baselines; resume."""
import json

import cv2
import numpy as np
import pytest

from volseg.cli import main
from volseg.clicks import Click
from volseg.errors import InputError
from volseg.eval import run2d
from volseg.eval.baselines import GrabCutMethod, RandomWalkerMethod, seed_labels
from volseg.eval.cli2d import parse_options

H, W = 40, 48


def scene(seed):
    """A bright rectangle on a dark noisy background, and its mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((H, W), np.uint8)
    mask[8 + seed:28, 10:34 - seed] = 255
    grey = np.where(mask > 0, 200, 40) + rng.integers(-15, 16, (H, W))  # grey noise, bright object
    img = np.repeat(grey[..., None], 3, axis=2) * np.array([1.0, 0.9, 0.7])
    return img.astype(np.uint8), mask


@pytest.fixture
def berkeley(tmp_path):
    root = tmp_path / "berkeley"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, stem in enumerate(["100", "100a"]):
        img, mask = scene(i)
        cv2.imwrite(str(root / "images" / f"{stem}.png"), img[..., ::-1].copy())
        cv2.imwrite(str(root / "masks" / f"{stem}.png"), mask)
    return root


def run(*args):
    return main(["eval", "--no-progress", *map(str, args)])


def test_cli_random_walker_end_to_end(berkeley, tmp_path, capsys):
    out = tmp_path / "out"
    assert run("--dataset", "berkeley", "--root", berkeley, "--method", "random-walker", "--out", out, "--max-clicks",
               5) == 0
    printed = capsys.readouterr().out
    assert "| random-walker | 2 |" in printed
    files = sorted(p.name for p in (out / "instances").iterdir())
    assert files == ["Berkeley_random-walker_100.json", "Berkeley_random-walker_100a.json"]
    rec = json.loads((out / "instances" / files[0]).read_text())
    assert len(rec["ious"]) <= 5 and rec["ious"][-1] > 0.85
    assert rec["clicks"][0]["positive"] and len(rec["seconds"]) == len(rec["ious"])
    assert {"noc85", "noc90", "noic", "config"} <= set(rec)
    summary = json.loads((out / "summary_Berkeley_random-walker.json").read_text())
    assert summary["instances"] == 2 and len(summary["miou"]) == 5
    assert (out / "summary_Berkeley_random-walker.md").read_text().startswith("# Berkeley")
    assert (out / "report_Berkeley.md").is_file()
    assert (out / "miou_Berkeley.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_resumes_without_recomputing(berkeley, tmp_path, monkeypatch):
    out = tmp_path / "out"
    common = ("--dataset", "Berkeley", "--root", berkeley, "--method", "grabcut", "--out", out, "--max-clicks", 3)
    assert run(*common, "--max-instances", 1) == 0
    first = out / "instances" / "Berkeley_grabcut_100.json"
    stamp, content = first.stat().st_mtime_ns, first.read_text()

    calls = []
    real = run2d.evaluate_sample
    monkeypatch.setattr(run2d, "evaluate_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert run(*common) == 0
    assert len(calls) == 1  # only the second instance was computed
    assert first.stat().st_mtime_ns == stamp and first.read_text() == content
    summary = json.loads((out / "summary_Berkeley_grabcut.json").read_text())
    assert summary["instances"] == 2 and summary["computed_now"] == 1


def test_cli_refuses_to_mix_settings(berkeley, tmp_path, capsys):
    out = tmp_path / "out"
    common = ("--dataset", "Berkeley", "--root", berkeley, "--method", "grabcut", "--out", out, "--max-clicks", 2,
              "--max-instances", 1)
    assert run(*common) == 0
    assert run(*common, "--option", "iterations=2") == 2
    assert "computed with other settings" in capsys.readouterr().err
    assert run(*common, "--option", "iterations=2", "--tag", "grabcut-it2") == 0


def test_cli_wrong_root_is_a_clear_error(tmp_path, capsys):
    assert run("--dataset", "Berkeley", "--root", tmp_path / "missing", "--method", "grabcut", "--out",
               tmp_path / "o") == 2
    assert "volseg: error: dataset root" in capsys.readouterr().err
    (tmp_path / "img").mkdir()
    assert run("--dataset", "Berkeley", "--root", tmp_path, "--method", "grabcut", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert "does not look like a Berkeley dataset" in err and "images/" in err


def test_cli_bad_pairs_fail_before_their_instance_is_evaluated(berkeley, tmp_path, capsys):
    """A mask of another size than its image is found from the file headers before any instance runs; an
    empty mask (no object to click on) before its own instance runs; each is one error line naming it."""
    mask = berkeley / "masks" / "100a.png"
    cv2.imwrite(str(mask), np.zeros((H + 2, W), np.uint8))
    assert run("--dataset", "Berkeley", "--root", berkeley, "--method", "gp", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert f"mask {mask} is {H + 2}x{W} pixels, its image" in err and not (tmp_path / "o").exists()
    cv2.imwrite(str(mask), np.zeros((H, W), np.uint8))
    assert run("--dataset", "Berkeley", "--root", berkeley, "--method", "gp", "--out", tmp_path / "o") == 2
    assert "100a.png (instance 100a) has no object pixels" in capsys.readouterr().err


def test_cli_unknown_method_and_option(berkeley, tmp_path, capsys):
    assert run("--dataset", "Berkeley", "--root", berkeley, "--method", "snake", "--out", tmp_path / "o") == 2
    assert "unknown method 'snake'" in capsys.readouterr().err
    with pytest.raises(InputError, match="has no setting 'bta'"):
        parse_options(["random-walker:bta=3"], ["random-walker", "grabcut"])
    options = ["random-walker:beta=3", "radius=4", "grabcut:pr_fg_radius=2.5"]
    assert parse_options(options, ["random-walker", "grabcut"]) == {
        "random-walker": {"beta": 3, "radius": 4}, "grabcut": {"radius": 4, "pr_fg_radius": 2.5}}


def test_several_methods_share_one_report(berkeley, tmp_path):
    out = tmp_path / "out"
    assert run("--dataset", "Berkeley", "--root", berkeley, "--method", "grabcut", "random-walker", "--out", out,
               "--max-clicks", 2, "--max-instances", 1) == 0
    text = (out / "report_Berkeley.md").read_text()
    assert "| grabcut |" in text and "| random-walker |" in text


# -- baselines ---------------------------------------------------------------------------------
def test_seed_disks_later_clicks_win():
    lab = seed_labels((20, 20), [Click((10, 10), True), Click((10, 13), False)], radius=2)
    assert lab[10, 8] == 1 and lab[10, 13] == 2 and lab[10, 11] == 2  # overlap goes to the later click
    assert (lab == 1).sum() + (lab == 2).sum() == np.count_nonzero(lab)
    assert lab[0, 0] == 0


@pytest.mark.parametrize("method", [RandomWalkerMethod(beta=130), GrabCutMethod()])
def test_baselines_segment_an_easy_scene(method):
    img, mask = scene(0)
    method.set_image(img)
    prob = method.predict([Click((18.0, 22.0), True)])
    assert prob.shape == (H, W) and prob.dtype == np.float32
    pred = prob > 0.49
    gt = mask > 0
    assert (pred & gt).sum() / (pred | gt).sum() > 0.9
    prob2 = method.predict([Click((18.0, 22.0), True), Click((2.0, 2.0), False)])
    assert prob2[2, 2] < 0.49 and prob2[18, 22] > 0.49


def test_gp_method_through_session():
    pytest.importorskip("volseg.session")
    from volseg.eval.methods import GPMethod

    img, mask = scene(0)
    m = GPMethod()
    rec = run2d.evaluate_sample(m, img, (mask > 0).astype(np.int8), max_clicks=3)
    assert len(rec["ious"]) >= 1 and all(0 <= v <= 1 for v in rec["ious"])
    assert len(m.session.clicks) == len(rec["clicks"])  # one click added per prediction, never replayed


def test_cli_gp_with_settings_file(berkeley, tmp_path):
    pytest.importorskip("volseg.session")
    cfg = tmp_path / "gp.yaml"
    cfg.write_text("spatial_fraction: 0.3\n")
    out = tmp_path / "out"
    assert run("--dataset", "Berkeley", "--root", berkeley, "--method", "gp", "--config", cfg, "--out", out,
               "--max-clicks", 2, "--max-instances", 1) == 0
    rec = json.loads((out / "instances" / "Berkeley_gp_100.json").read_text())
    assert rec["config"]["gp"]["spatial_fraction"] == 0.3 and rec["config"]["features"] == "filterbank"


def test_gp_method_records_an_extractor_object_by_name():
    """A resumed run compares settings; an extractor object must not be recorded by its repr."""
    from volseg.eval.methods import GPMethod
    from volseg.features import FilterBank

    a, b = GPMethod(features=FilterBank()).config(), GPMethod(features=FilterBank()).config()
    assert a == b and a["features"] == "filterbank"
