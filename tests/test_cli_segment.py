"""`volseg segment` end to end in 2D and 3D, and every bad input: one clear message, exit 2, nothing written."""
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from volseg.cli import main
from volseg.provenance import read_sidecar


def run(*argv):
    return main([str(a) for a in argv])


@pytest.fixture
def wide_config(tmp_path):
    """Tiny test images need a spatial lengthscale that lets two clicks cover a whole box (one RBF: the
    multiscale kernel keeps part of the variance in a short GP)."""
    p = tmp_path / "wide.yaml"
    p.write_text("gp:\n  spatial_fraction: 0.3\n  kernel: rbf\n")
    return p


@pytest.fixture
def volume(tmp_path):
    """An oblique, anisotropic NIfTI volume with a bright box, and a clicks file in world coordinates."""
    rng = np.random.default_rng(0)
    vol = 0.1 * rng.standard_normal((32, 30, 16)).astype(np.float32)
    vol[8:20, 10:22, 4:12] += 1.0
    c, s = np.cos(0.3), np.sin(0.3)
    affine = np.array([[0.8 * c, -0.8 * s, 0, 10], [0.8 * s, 0.8 * c, 0, -20], [0, 0, 2.5, 5], [0, 0, 0, 1]])
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), path)
    clicks = tmp_path / "clicks.json"
    inside = affine @ [14, 16, 8, 1]  # RAS mm
    clicks.write_text(json.dumps({"coordinates": "world-ras", "clicks": [
        {"position": inside[:3].tolist(), "label": "positive"},
        {"position": (affine @ [2, 2, 2, 1])[:3].tolist(), "label": "negative"}]}))
    return path, clicks, affine


def test_segment_3d_keeps_geometry_and_writes_provenance(tmp_path, volume, wide_config):
    path, clicks, affine = volume
    out, prob, unc = tmp_path / "mask.nii.gz", tmp_path / "prob.nii.gz", tmp_path / "std.nii.gz"
    assert run("segment", path, "--clicks", clicks, "--out", out, "--prob", prob, "--uncertainty", unc,
               "--config", wide_config) == 0
    m = nib.load(out)
    np.testing.assert_allclose(m.affine, affine, atol=1e-5)
    mask = np.asarray(m.dataobj)
    assert mask.shape == (32, 30, 16) and mask[14, 16, 8] == 1 and mask[2, 2, 2] == 0
    assert mask[9:19, 11:21, 5:11].mean() > 0.9 and mask[24:, :, :].mean() < 0.05
    p = np.asarray(nib.load(prob).dataobj)
    assert p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1
    rec = read_sidecar(out)
    assert rec["input_sha256"] and rec["clicks_sha256"] and len(rec["click_seconds"]) == 2
    assert rec["clicks"][0]["label"] == "positive" and rec["versions"]["torch"]
    assert rec["parameters"]["spatial_fraction"] == 0.3


def test_segment_2d_png_with_csv_clicks(tmp_path, wide_config):
    rgb = np.full((40, 50, 3), 30, np.uint8)
    rgb[10:30, 15:40] = (220, 200, 40)
    PILImage.fromarray(rgb).save(tmp_path / "img.png")
    (tmp_path / "c.csv").write_text("i,j,label\n20,27,positive\n2,2,negative\n")
    out = tmp_path / "mask.png"
    assert run("segment", tmp_path / "img.png", "--clicks", tmp_path / "c.csv", "--out", out, "--config",
               wide_config) == 0
    mask = np.asarray(PILImage.open(out))
    assert mask.shape == (40, 50) and mask[20, 27] == 1 and mask[11:29, 16:39].mean() > 0.9


def test_existing_output_kept_without_overwrite(tmp_path, volume, capsys):
    path, clicks, _ = volume
    out = tmp_path / "mask.nii.gz"
    out.write_bytes(b"keep me")
    assert run("segment", path, "--clicks", clicks, "--out", out) == 2
    assert "already exists" in capsys.readouterr().err and out.read_bytes() == b"keep me"
    assert run("segment", path, "--clicks", clicks, "--out", out, "--overwrite") == 0
    assert out.read_bytes() != b"keep me"


def test_output_over_input_refused(tmp_path, volume, capsys):
    path, clicks, _ = volume
    before = path.read_bytes()
    assert run("segment", path, "--clicks", clicks, "--out", path, "--overwrite") == 2
    assert "input" in capsys.readouterr().err and path.read_bytes() == before


def write_clicks(tmp_path, clicks, name="bad.json"):
    p = tmp_path / name
    p.write_text(json.dumps({"clicks": clicks}) if not isinstance(clicks, str) else clicks)
    return p


@pytest.mark.parametrize("clicks, message", [
    ([{"position": [99, 2, 2], "label": "positive"}], "outside"),
    ([{"position": [2, 2], "label": "positive"}], "coordinates"),
    ([{"position": [float("nan"), 2, 2], "label": "positive"}], "NaN"),
    ([{"position": [2, 2, 2], "label": "maybe"}], "label"),
    ([], "no clicks"),
    ("{not json", "not valid"),
])
def test_bad_clicks(tmp_path, volume, capsys, clicks, message):
    path, _, _ = volume
    out = tmp_path / "mask.nii.gz"
    assert run("segment", path, "--clicks", write_clicks(tmp_path, clicks), "--out", out) == 2
    err = capsys.readouterr().err
    assert err.startswith("volseg: error:") and message in err
    assert not out.exists() and not list(tmp_path.glob(".*tmp*"))


def test_bad_images(tmp_path, volume, capsys):
    _, clicks, affine = volume
    out = tmp_path / "mask.nii.gz"
    cases = {}
    cases["missing"] = (tmp_path / "nope.nii.gz", "does not exist")
    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x1f\x8b garbage")
    cases["corrupt"] = (tmp_path / "corrupt.nii.gz", "corrupt.nii.gz")
    (tmp_path / "x.xyz").write_bytes(b"1")
    cases["unsupported"] = (tmp_path / "x.xyz", "unsupported")
    nan = np.ones((32, 30, 16), np.float32)
    nan[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, affine), tmp_path / "nan.nii.gz")
    cases["nan"] = (tmp_path / "nan.nii.gz", "NaN")
    for name, (img, message) in cases.items():
        assert run("segment", img, "--clicks", clicks, "--out", out) == 2, name
        err = capsys.readouterr().err
        assert message.lower() in err.lower(), (name, err)
        assert not out.exists()


def test_prior_with_other_geometry_and_memory_budget(tmp_path, volume, capsys):
    path, clicks, affine = volume
    out = tmp_path / "mask.nii.gz"
    shifted = affine.copy()
    shifted[0, 3] += 7
    nib.save(nib.Nifti1Image(np.zeros((32, 30, 16), np.uint8), shifted), tmp_path / "prior.nii.gz")
    assert run("segment", path, "--clicks", clicks, "--out", out, "--prior", tmp_path / "prior.nii.gz") == 2
    assert "origin" in capsys.readouterr().err and not out.exists()
    assert run("segment", path, "--clicks", clicks, "--out", out, "--memory-budget", "100KB") == 2
    assert "memory budget" in capsys.readouterr().err and not out.exists()


def test_prior_refinement(tmp_path, volume):
    path, clicks, affine = volume
    prior = np.zeros((32, 30, 16), np.uint8)
    prior[8:20, 10:22, 4:12] = 1
    nib.save(nib.Nifti1Image(prior, affine), tmp_path / "prior.nii.gz")
    out = tmp_path / "mask.nii.gz"
    assert run("segment", path, "--clicks", clicks, "--out", out, "--prior", tmp_path / "prior.nii.gz") == 0
    assert (np.asarray(nib.load(out).dataobj) == prior).mean() > 0.97


def test_leftover_sidecar_of_an_interrupted_run_is_replaced(tmp_path, volume):
    """The mask is renamed into place last; a sidecar without its mask is an interrupted job's leftover."""
    path, clicks, _ = volume
    out = tmp_path / "mask.nii.gz"
    (tmp_path / "mask.json").write_text('{"volseg": "0.1", "outputs_sha256": {}}')
    assert run("segment", path, "--clicks", clicks, "--out", out) == 0
    assert out.exists() and read_sidecar(out)["input_sha256"]
