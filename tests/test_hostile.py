"""Hostile inputs (issue #31): every bad input or bad moment gives one `volseg: error:` line, exit 2,
and leaves the output folder exactly as it was; nothing stale is kept, nothing overwritten.

Each test hashes the folder it runs in before and after.  The crash, concurrency, orphan and
SIGTERM tests run `python -m volseg` in a subprocess and steer it with the test-only fault hook
``VOLSEG_TEST_FAULT`` (volseg/faults.py).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage

from volseg.cli import main
from volseg.provenance import file_sha256, read_sidecar

REPO = Path(__file__).resolve().parents[1]


# -- helpers ---------------------------------------------------------------------------------

def folder_state(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` (hidden ones too) with its content hash."""
    state = {}
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).as_posix()
        state[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return state


def run(capfd, *argv) -> tuple[int, list[str]]:
    """Run the CLI in-process; (exit code, stderr lines).  capfd also sees what C++ libraries print."""
    capfd.readouterr()
    rc = main([str(a) for a in argv])
    return rc, [line for line in capfd.readouterr().err.splitlines() if line.strip()]


def assert_refused(capfd, folder: Path, *argv, message: str) -> str:
    """Exit 2, exactly one `volseg: error:` line containing ``message``, ``folder`` unchanged."""
    before = folder_state(folder)
    rc, err = run(capfd, *argv)
    assert rc == 2, (rc, err)
    assert len(err) == 1 and err[0].startswith("volseg: error: "), err
    assert message.lower() in err[0].lower(), err
    assert folder_state(folder) == before
    return err[0]


def volseg_cmd(*argv) -> list[str]:
    return [sys.executable, "-m", "volseg", *[str(a) for a in argv]]


def volseg_env(fault: str | None = None) -> dict:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OMP_NUM_THREADS": "1"}
    env.pop("VOLSEG_TEST_FAULT", None)
    if fault:
        env["VOLSEG_TEST_FAULT"] = fault
    return env


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*") if ".tmp" in p.name or p.name.endswith(".lock"))


def write_clicks(path: Path, clicks) -> Path:
    path.write_text(json.dumps({"coordinates": "index",
                                "clicks": [{"position": list(p), "label": lab} for p, lab in clicks]}))
    return path


@pytest.fixture
def work(tmp_path):
    """A 3D NIfTI with a bright box, a 2D PNG with a bright box, clicks for both and a wide config."""
    rng = np.random.default_rng(0)
    vol = (0.1 * rng.standard_normal((16, 14, 8))).astype(np.float32)
    vol[4:10, 4:10, 2:6] += 1.0
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "vol.nii.gz")
    write_clicks(tmp_path / "c3.json", [((6, 6, 4), "positive"), ((1, 1, 1), "negative")])
    rgb = np.full((20, 24, 3), 30, np.uint8)
    rgb[5:15, 6:18] = (220, 200, 40)
    PILImage.fromarray(rgb).save(tmp_path / "img.png")
    write_clicks(tmp_path / "c2.json", [((10, 10), "positive"), ((1, 1), "negative")])
    (tmp_path / "wide.yaml").write_text("gp:\n  spatial_fraction: 0.3\n")
    (tmp_path / "out").mkdir()
    return tmp_path


def segment3d(work, out, *extra):
    return ("segment", work / "vol.nii.gz", "--clicks", work / "c3.json", "--out", out,
            "--config", work / "wide.yaml", *extra)


# -- what already held: it stays held -----------------------------------------------------------

@pytest.mark.parametrize("case, message", [
    ("missing image", "does not exist"),
    ("garbage image", "cannot read"),
    ("truncated image", "cannot read"),
    ("click outside", "outside"),
    ("click with NaN", "NaN"),
    ("no clicks", "no clicks"),
    ("existing output", "already exists"),
    ("output over input", "input"),
])
def test_held_cases_stay_held(work, capfd, case, message):
    out = work / "out" / "m.nii.gz"
    image, clicks = work / "vol.nii.gz", work / "c3.json"
    if case == "missing image":
        image = work / "nope.nii.gz"
    elif case == "garbage image":
        image = work / "garbage.nii.gz"
        image.write_bytes(b"\x1f\x8b not a volume")
    elif case == "truncated image":
        image = work / "trunc.nii.gz"
        image.write_bytes((work / "vol.nii.gz").read_bytes()[:200])
    elif case == "click outside":
        clicks = write_clicks(work / "bad.json", [((99, 2, 2), "positive")])
    elif case == "click with NaN":
        clicks = work / "bad.json"
        clicks.write_text('{"clicks": [{"position": [NaN, 2, 2], "label": "positive"}]}')
    elif case == "no clicks":
        clicks = write_clicks(work / "bad.json", [])
    elif case == "existing output":
        out.write_bytes(b"keep me")
    elif case == "output over input":
        out = image
    assert_refused(capfd, work, "segment", image, "--clicks", clicks, "--out", out, message=message)


# -- 1: a stale mask next to a new sidecar is not taken as done --------------------------------

def test_1_stale_mask_next_to_new_sidecar_is_recomputed(work, capfd):
    manifest = work / "m.csv"
    manifest.write_text("image,clicks\nvol.nii.gz,c3.json\n")
    out = work / "out"
    mask = out / "vol_mask.nii.gz"
    assert run(capfd, "batch", manifest, "--out", out, "--quiet", "--config", work / "wide.yaml")[0] == 0
    old_mask = mask.read_bytes()
    write_clicks(work / "c3.json", [((6, 6, 4), "positive"), ((1, 1, 1), "negative"), ((14, 12, 6), "negative"),
                                    ((8, 2, 1), "negative")])
    assert run(capfd, "batch", manifest, "--out", out, "--quiet", "--config", work / "wide.yaml")[0] == 0
    assert read_sidecar(mask)["outputs_sha256"][str(mask)] == file_sha256(mask)
    # what a crash between the sidecar's rename and the mask's leaves: the new sidecar beside the old mask
    mask.write_bytes(old_mask)
    assert run(capfd, "batch", manifest, "--out", out, "--quiet", "--config", work / "wide.yaml")[0] == 0
    case = json.loads((out / "batch_report.json").read_text())["cases"][0]
    assert case["status"] == "done" and "mask" in case["reason"]
    assert read_sidecar(mask)["outputs_sha256"][str(mask)] == file_sha256(mask)


# -- 2: a batch case may not write over an input, outside --out, or onto another case's output ---

@pytest.mark.parametrize("rows, out_is_data, message", [
    ("vol.nii.gz,c3.json,../vol.nii.gz\n", False, "outside"),                 # escapes --out
    ("vol.nii.gz,c3.json,/tmp/elsewhere.nii.gz\n", False, "outside"),
    ("vol.nii.gz,c3.json,img.png\nimg.png,c2.json,\n", True, "input"),       # a case's output is another's image
    ("vol.nii.gz,c3.json,c2.nii.gz\nimg.png,c2.json,\n", True, "input"),     # ... or, by its sidecar, its clicks
    ("vol.nii.gz,c3.json,a.nii.gz\nimg.png,c2.json,a.png\n", False, "both"),  # a.json shared
    ("vol.nii.gz,c3.json,batch_report.nii.gz\n", False, "batch_report.json"),
    ("vol.nii.gz,c3.json,a.xyz\n", False, "unsupported output format"),
])
def test_2_manifest_checked_whole_before_any_case_runs(work, capfd, rows, out_is_data, message):
    (work / "m.csv").write_text("image,clicks,output\n" + rows)
    assert_refused(capfd, work, "batch", work / "m.csv", "--out", work if out_is_data else work / "out", "--quiet",
                   message=message)


# -- 3: two writers on one output --------------------------------------------------------------

def test_3_a_live_claim_refuses_and_a_dead_one_is_taken_over(work, capfd):
    out = work / "out" / "m.nii.gz"
    lock = work / "out" / ".m.nii.gz.lock"
    lock.write_text(f"{os.getpid()} test\n")  # this process is alive
    err = assert_refused(capfd, work, *segment3d(work, out), message="another volseg run")
    assert str(lock) in err and str(os.getpid()) in err
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.write_text(f"{dead.pid} test\n")
    assert run(capfd, *segment3d(work, out))[0] == 0
    assert out.is_file() and not lock.exists()
    # a batch claims its --out through its report
    (work / "m.csv").write_text("image,clicks\nvol.nii.gz,c3.json\n")
    (work / "out" / ".batch_report.json.lock").write_text(f"{os.getpid()} test\n")
    assert_refused(capfd, work, "batch", work / "m.csv", "--out", work / "out", "--quiet",
                   message=".batch_report.json.lock")


def test_3_concurrent_writers_leave_the_files_of_one_run(work):
    """A slow first writer holds its claim; the second fails cleanly; the files on disk are one run's."""
    out = work / "out" / "m.nii.gz"
    write_clicks(work / "other.json", [((6, 6, 4), "positive"), ((12, 10, 6), "positive")])
    for extra in ((), ("--overwrite",)):
        go_on = work / f"go-on{len(extra)}"  # the first writer waits in its commit until the second has finished
        first = subprocess.Popen(volseg_cmd(*segment3d(work, out, "--prob", work / "out" / "p.nii.gz", *extra)),
                                 env=volseg_env(f"before-commit:wait={go_on}"), stderr=subprocess.PIPE, text=True)
        lock = work / "out" / ".m.nii.gz.lock"
        deadline = time.time() + 60
        while not lock.exists() and time.time() < deadline:
            time.sleep(0.05)
        second = subprocess.run(volseg_cmd("segment", work / "vol.nii.gz", "--clicks", work / "other.json", "--out",
                                           out, "--prob", work / "out" / "p.nii.gz", *extra),
                                env=volseg_env(), capture_output=True, text=True, timeout=120)
        go_on.write_text("")
        assert first.wait(timeout=120) == 0, first.stderr.read()
        assert second.returncode == 2, second.stderr
        err = [line for line in second.stderr.splitlines() if line.strip()]
        assert len(err) == 1 and "another volseg run" in err[0] and str(lock) in err[0], err
        record = read_sidecar(out)
        assert record["clicks_file"] == str(work / "c3.json")
        for path, sha in record["outputs_sha256"].items():
            assert file_sha256(path) == sha
        assert leftovers(work) == []


# -- 4: every output is validated before anything is computed or written -------------------------

@pytest.mark.parametrize("name, extra, message", [
    ("m.xyz", (), "unsupported output format"),
    ("m.jpg", (), "unsupported output format"),
    ("m.png", (), "2D"),
    ("dir", ("--overwrite",), "folder"),
    ("clicks", (), "input"),
    ("p.nii.gz", (), "differ"),
])
def test_4_bad_outputs_leave_nothing(work, capfd, name, extra, message):
    out = work / "out" / name
    prob, unc = work / "out" / "p.nii.gz", work / "out" / "u.nii.gz"
    clicks = work / "c3.json"
    if name == "dir":
        out.mkdir()
    if name == "clicks":  # the sidecar of out/c3.nii.gz would be the clicks file
        clicks = work / "out" / "c3.json"
        clicks.write_text((work / "c3.json").read_text())
        out = work / "out" / "c3.nii.gz"
    assert_refused(capfd, work, "segment", work / "vol.nii.gz", "--clicks", clicks, "--out", out,
                   "--prob", prob, "--uncertainty", unc, *extra, message=message)


def test_4_bad_map_format_and_2d_map_of_a_volume(work, capfd):
    out = work / "out" / "m.nii.gz"
    assert_refused(capfd, work, *segment3d(work, out, "--prob", work / "out" / "p.jpg"), message="unsupported")
    assert_refused(capfd, work, *segment3d(work, out, "--uncertainty", work / "out" / "u.tif"), message="2D")


# -- 5: no user file is replaced without --overwrite --------------------------------------------

def test_5_unrelated_sidecar_and_companion_are_kept(work, capfd):
    (work / "out" / "m.json").write_text('{"mine": true}')
    assert_refused(capfd, work, *segment3d(work, work / "out" / "m.nii.gz"), message="m.json")
    (work / "out" / "m.json").unlink()
    (work / "out" / "m.zraw").write_bytes(b"my data")
    assert_refused(capfd, work, *segment3d(work, work / "out" / "m.mhd"), message="m.zraw")


def test_5_leftovers_of_an_interrupted_job_are_replaced(work, capfd):
    """A volseg sidecar without its mask (and the .zraw it records) is an interrupted job's leftover."""
    out = work / "out" / "m.mhd"
    assert run(capfd, *segment3d(work, out))[0] == 0
    out.unlink()
    assert run(capfd, *segment3d(work, out))[0] == 0
    record = read_sidecar(out)
    assert all(file_sha256(p) == s for p, s in record["outputs_sha256"].items())
    (work / "out" / "m.zraw").write_bytes(b"changed since")  # not the file the record names: a user's
    out.unlink()
    assert_refused(capfd, work, *segment3d(work, out), message="m.zraw")


# -- 6: only negative clicks give an empty mask --------------------------------------------------

@pytest.mark.parametrize("dims", [2, 3])
def test_6_all_negative_clicks_give_an_empty_mask(work, capfd, dims):
    if dims == 3:
        image = work / "vol.nii.gz"
        clicks = write_clicks(work / "neg.json", [((1, 1, 1), "negative"), ((8, 8, 4), "negative")])
        out = work / "out" / "m.nii.gz"
    else:
        image = work / "img.png"
        clicks = write_clicks(work / "neg.json", [((1, 1), "negative"), ((10, 10), "negative")])
        out = work / "out" / "m.png"
    rc, err = run(capfd, "segment", image, "--clicks", clicks, "--out", out, "--prob", work / "out" / "p.nii.gz",
                  "--uncertainty", work / "out" / "u.nii.gz")
    assert rc == 0 and err == []
    from volseg.io import read_mask

    assert read_mask(out).max() == 0
    assert read_sidecar(out)["voxels_per_label"] == {"0": int(np.prod(read_mask(out).shape))}
    p = np.asarray(nib.load(work / "out" / "p.nii.gz").dataobj)
    assert p.max() < 0.5


# -- 7: constant images work; images too small are refused ---------------------------------------

@pytest.mark.parametrize("kind", ["float volume of 100", "int16 volume of 1000", "grey PNG", "RGB PNG"])
def test_7_constant_images_give_a_mask(work, capfd, kind):
    if "volume" in kind:
        dtype, value = (np.float32, 100) if "float" in kind else (np.int16, 1000)
        image = work / "const.nii.gz"
        nib.save(nib.Nifti1Image(np.full((16, 14, 8), value, dtype), np.eye(4)), image)
        clicks, out, pos = work / "c3.json", work / "out" / "m.nii.gz", (6, 6, 4)
    else:
        image = work / "const.png"
        PILImage.fromarray(np.full((20, 24) if "grey" in kind else (20, 24, 3), 128, np.uint8)).save(image)
        clicks, out, pos = work / "c2.json", work / "out" / "m.png", (10, 10)
    rc, err = run(capfd, "segment", image, "--clicks", clicks, "--out", out, "--config", work / "wide.yaml")
    assert rc == 0 and err == []
    from volseg.io import read_mask

    m = read_mask(out)
    assert m[pos] == 1 and m[(1,) * len(pos)] == 0


@pytest.mark.parametrize("shape", [(1, 1), (1, 30), (30, 1)])
def test_7_too_small_images_are_refused(work, capfd, shape):
    PILImage.fromarray(np.full(shape, 128, np.uint8)).save(work / "tiny.png")
    write_clicks(work / "c00.json", [((0, 0), "positive")])
    assert_refused(capfd, work, "segment", work / "tiny.png", "--clicks", work / "c00.json", "--out",
                   work / "out" / "m.png", message=f"{shape[0]}x{shape[1]}")


def test_7_two_pixels_along_two_axes_are_enough(work, capfd):
    PILImage.fromarray(np.array([[0, 255], [0, 255]], np.uint8)).save(work / "tiny.png")
    write_clicks(work / "c.json", [((0, 1), "positive"), ((0, 0), "negative")])
    assert run(capfd, "segment", work / "tiny.png", "--clicks", work / "c.json", "--out",
               work / "out" / "m.png")[0] == 0
    one_slice = np.zeros((20, 18, 1), np.float32)  # a volume of one slice is a 2D image
    one_slice[5:15, 5:15] = 1
    nib.save(nib.Nifti1Image(one_slice, np.eye(4)), work / "slice.nii.gz")
    write_clicks(work / "cs.json", [((10, 10, 0), "positive"), ((1, 1, 0), "negative")])
    assert run(capfd, "segment", work / "slice.nii.gz", "--clicks", work / "cs.json", "--out",
               work / "out" / "s.nii.gz")[0] == 0
    assert nib.load(work / "out" / "s.nii.gz").get_fdata()[10, 10, 0] == 1


# -- 8: --memory-budget ------------------------------------------------------------------------------

@pytest.mark.parametrize("budget", ["abc", "nanGB", "infGB", "", "-1GB", "0"])
def test_8_bad_memory_budget_is_refused_up_front(work, capfd, budget):
    assert_refused(capfd, work, *segment3d(work, work / "out" / "m.nii.gz", f"--memory-budget={budget}"),
                   message="--memory-budget")
    (work / "m.csv").write_text("image,clicks\nvol.nii.gz,c3.json\n")
    assert_refused(capfd, work, "batch", work / "m.csv", "--out", work / "out", "--quiet", f"--memory-budget={budget}",
                   message="--memory-budget")


def test_8_small_budget_fits_a_small_image_and_sizes_have_units(work, capfd):
    nib.save(nib.Nifti1Image(np.arange(8, dtype=np.float32).reshape(2, 2, 2), np.eye(4)), work / "tiny.nii.gz")
    write_clicks(work / "c.json", [((1, 1, 1), "positive"), ((0, 0, 0), "negative")])
    rc, err = run(capfd, "segment", work / "tiny.nii.gz", "--clicks", work / "c.json", "--out",
                  work / "out" / "t.nii.gz", "--memory-budget", "1MB")
    assert rc == 0, err
    assert run(capfd, *segment3d(work, work / "out" / "m.nii.gz", "--memory-budget", "30MB"))[0] == 0
    err = assert_refused(capfd, work, *segment3d(work, work / "out" / "n.nii.gz", "--memory-budget", "20KB"),
                         message="memory budget")
    assert "20.0 KiB" in err and "0.0 GiB" not in err


# -- 9: --config files -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("gp: [unclosed\n", "not valid YAML"),
    ("- 1\n- 2\n", "mapping"),
    ("gp: 3\n", "mapping"),
    ("gp:\n  noise: abc\n", "noise"),
    ("gp:\n  noise: -1\n", "noise"),
    ("gp:\n  noise: .nan\n", "noise"),
    ("gp:\n  kernel: gaussian\n", "kernel"),
    ("gp:\n  feature_lengthscale: 0\n", "feature_lengthscale"),
    ("gp:\n  spatial_lengthscale: -5\n", "spatial_lengthscale"),
    ("gp:\n  connected: maybe\n", "connected"),
    ("gp:\n  edge_max_locations: 1.5\n", "edge_max_locations"),
    ("gp:\n  short_share: 2\n", "short_share"),
    ("gp:\n  chunk_bytes: lots\n", "chunk_bytes"),
    ("gp:\n  colour: red\n", "colour"),
])
def test_9_bad_config_is_refused_naming_the_key(work, capfd, text, message):
    (work / "bad.yaml").write_text(text)
    assert_refused(capfd, work, "segment", work / "vol.nii.gz", "--clicks", work / "c3.json", "--out",
                   work / "out" / "m.nii.gz", "--config", work / "bad.yaml", message=message)


# -- 10: --out problems ------------------------------------------------------------------------------

def test_10_out_paths(work, capfd):
    (work / "afile").write_text("x")
    assert_refused(capfd, work, *segment3d(work, work / "afile" / "m.nii.gz"), message="not a folder")
    assert_refused(capfd, work, *segment3d(work, ""), message="empty")
    assert_refused(capfd, work, *segment3d(work, work / "vol.nii.gz" / "m.nii.gz"), message="not a folder")
    (work / "m.csv").write_text("image,clicks\nvol.nii.gz,c3.json\n")
    assert_refused(capfd, work, "batch", work / "m.csv", "--out", work / "afile", "--quiet", message="not a folder")
    assert_refused(capfd, work, "batch", work / "m.csv", "--out", "", "--quiet", message="empty")
    # a new folder for --out is not left behind when the job fails
    write_clicks(work / "bad.json", [((99, 2, 2), "positive")])
    assert_refused(capfd, work, "segment", work / "vol.nii.gz", "--clicks", work / "bad.json", "--out",
                   work / "new" / "deeper" / "m.nii.gz", message="outside")


@pytest.fixture
def refusing_folder(work, monkeypatch):
    """A folder that exists but refuses new files, as a read-only or virtual file system (/proc) does: the
    tests run as any user, and root may write where permission bits say no, so the refusal is simulated."""
    import tempfile

    locked = work / "locked"
    locked.mkdir()
    real = tempfile.mkdtemp

    def mkdtemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == locked:
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    return locked


@pytest.mark.parametrize("command", ["segment", "demo", "propagate", "eval-video", "eval", "serve", "train"])
def test_10_an_output_folder_that_refuses_files_is_refused_before_any_work(work, capfd, refusing_folder, command):
    out = refusing_folder / "new" / "m.png"
    frames = work / "frames"
    frames.mkdir()
    PILImage.open(work / "img.png").save(frames / "00000.png")
    PILImage.open(work / "img.png").save(frames / "00001.png")
    (work / "v.json").write_text(json.dumps([{"position": [10, 10], "positive": True, "frame": 0}]))
    argv = {"segment": ("segment", work / "img.png", "--clicks", work / "c2.json", "--out", out),
            "demo": ("demo", "--out", out.parent),
            "propagate": ("propagate", frames, "--clicks", work / "v.json", "--out", out.parent),
            "eval-video": ("eval-video", "--root", work, "--out", out.parent),
            "eval": ("eval", "--dataset", "GrabCut", "--root", work, "--method", "gp", "--out", out.parent),
            "serve": ("serve", work, "--out", out.parent),
            "train": ("train", "--config", REPO / "configs" / "train_smoke.yaml", "--out", out.parent)}[command]
    err = assert_refused(capfd, work, *argv, message="does not take new files")
    assert str(refusing_folder) in err and "Permission denied" in err


def test_10_a_write_that_fails_midway_names_the_output_and_leaves_nothing(work):
    """A full disk (or any error of the operating system) while an output is written: one error naming it,
    and neither a temporary file nor a partial output is left."""
    import errno

    from volseg.errors import OutputError
    from volseg.io.atomic import atomic_files, atomic_path

    target = work / "out" / "m.nii.gz"
    for writer in (atomic_path, atomic_files):
        with pytest.raises(OutputError, match="m.nii.gz: No space left on device"):
            with writer(target):
                raise OSError(errno.ENOSPC, "No space left on device")
        assert list((work / "out").iterdir()) == []


# -- 11: no leftovers; fsync; .mhd commit order ---------------------------------------------------------

def test_11_temp_files_of_dead_processes_are_removed(work, capfd):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = work / "out"
    stale = [out / f".m.nii.gz.{dead.pid}.abcd1234.tmp.nii.gz", out / f".other.json.{dead.pid}.x_y_z123.tmp.json"]
    for p in stale:
        p.write_bytes(b"half written")
    (out / f".m.mhd.{dead.pid}.qwer5678.tmp").mkdir()
    live = out / f".n.nii.gz.{os.getpid()}.abcd1234.tmp.nii.gz"  # a running writer's: left alone
    live.write_bytes(b"being written")
    assert run(capfd, *segment3d(work, out / "m.nii.gz"))[0] == 0
    assert leftovers(work) == [live.name]


def test_11_files_and_folder_are_fsynced(work, capfd, monkeypatch):
    import stat

    synced = []
    real = os.fsync

    def spy(fd):
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    assert run(capfd, *segment3d(work, work / "out" / "m.nii.gz"))[0] == 0
    assert synced.count("file") >= 2 and "dir" in synced  # mask and sidecar, then the folder


def test_11_mhd_header_is_renamed_last(work, capfd, monkeypatch):
    order = []
    real = os.replace

    def spy(src, dst):
        order.append(Path(dst).name)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    assert run(capfd, *segment3d(work, work / "out" / "m.mhd"))[0] == 0
    assert order == ["m.json", "m.zraw", "m.mhd"]


# -- 12: workers die with their parent -------------------------------------------------------------------

def _descendants(pid: int) -> set[int]:
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            continue
        for k in map(int, kids):
            if k not in found:
                found.add(k)
                todo.append(k)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="reads /proc")
def test_12_workers_exit_when_the_batch_is_killed(work):
    (work / "m.csv").write_text("image,clicks,output\nvol.nii.gz,c3.json,a.nii.gz\nvol.nii.gz,c3.json,b.nii.gz\n")
    batch = subprocess.Popen(volseg_cmd("batch", work / "m.csv", "--out", work / "out", "--workers", "2", "--quiet"),
                             env=volseg_env("before-commit:sleep=120"), stderr=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL)
    claims = [work / "out" / ".a.nii.gz.lock", work / "out" / ".b.nii.gz.lock"]
    deadline, workers = time.time() + 90, set()
    while time.time() < deadline:  # both workers hold their case's claim and sleep in the hook
        workers = _descendants(batch.pid)
        if all(c.exists() for c in claims):
            break
        time.sleep(0.2)
    assert workers, "no worker started"
    batch.send_signal(signal.SIGKILL)
    batch.wait()
    deadline = time.time() + 20
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.2)
    assert not [p for p in workers if _alive(p)]


# -- 13: SIGTERM on a batch ----------------------------------------------------------------------------

def test_13_sigterm_writes_the_report_like_ctrl_c(work):
    (work / "m.csv").write_text("image,clicks\nvol.nii.gz,c3.json\n")
    batch = subprocess.Popen(volseg_cmd("batch", work / "m.csv", "--out", work / "out", "--quiet"),
                             env=volseg_env("before-commit:sleep=120"), stderr=subprocess.PIPE,
                             stdout=subprocess.DEVNULL, text=True)
    deadline = time.time() + 90
    # the case is computed and its files staged (the sidecar's temporary file is written last): the
    # batch now waits in the hook, and SIGTERM must leave neither temporary files nor claims behind
    while not list((work / "out").glob(".vol_mask.json.*.tmp.json")) and time.time() < deadline:
        time.sleep(0.1)
    batch.send_signal(signal.SIGTERM)
    assert batch.wait(timeout=60) == 143
    assert batch.stderr.read().strip().splitlines() == ["volseg: interrupted (SIGTERM)"]
    report = json.loads((work / "out" / "batch_report.json").read_text())
    assert report["counts"]["not run"] == 1
    assert leftovers(work) == []


# -- 14: ITK warnings ---------------------------------------------------------------------------------

def test_14_itk_prints_only_the_error_line(work, capfd):
    (work / "garbage.dcm").write_bytes(b"DICM" * 100)
    assert_refused(capfd, work, "segment", work / "garbage.dcm", "--clicks", work / "c3.json", "--out",
                   work / "out" / "m.nii.gz", message="garbage.dcm")
    (work / "empty").mkdir()
    assert_refused(capfd, work, "segment", work / "empty", "--clicks", work / "c3.json", "--out",
                   work / "out" / "m.nii.gz", message="no DICOM series")


# -- crash window ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["before-rename:vol_mask.nii.gz:kill", "mid-write:vol_mask.nii.gz:kill"])
def test_crash_window_then_rerun_keeps_nothing_stale(work, fault):
    """Killed between the sidecar and the mask (or with the mask half written), then rerun."""
    manifest = work / "m.csv"
    manifest.write_text("image,clicks\nvol.nii.gz,c3.json\n")
    out = work / "out"
    cmd = volseg_cmd("batch", manifest, "--out", out, "--quiet", "--config", work / "wide.yaml")
    assert subprocess.run(cmd, env=volseg_env(), capture_output=True, timeout=120).returncode == 0
    # a negative click inside the box: its voxel keeps its label, so the new mask differs from the old one
    write_clicks(work / "c3.json", [((6, 6, 4), "positive"), ((1, 1, 1), "negative"), ((8, 8, 3), "negative")])
    crashed = subprocess.run(cmd, env=volseg_env(fault), capture_output=True, timeout=120)
    assert crashed.returncode == -signal.SIGKILL
    assert leftovers(out)  # the crash did leave something: a temp file and the claim
    rerun = subprocess.run(cmd, env=volseg_env(), capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    case = json.loads((out / "batch_report.json").read_text())["cases"][0]
    assert case["status"] == "done"
    record = read_sidecar(out / "vol_mask.nii.gz")
    assert record["clicks_sha256"] == file_sha256(work / "c3.json")
    assert record["outputs_sha256"][str(out / "vol_mask.nii.gz")] == file_sha256(out / "vol_mask.nii.gz")
    assert leftovers(work) == []
