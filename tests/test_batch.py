"""volseg batch: three generated cases, one broken; report, skip on rerun, recompute on change, Ray."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from volseg.batch import BatchOptions, default_output_name, read_manifest, run_batch
from volseg.errors import InputError
from volseg.image import Image


def _volume(seed: int) -> tuple[Image, tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    shape, centre = (24, 22, 10), (12, 11, 5)
    d2 = sum(((g - c) / r) ** 2 for g, c, r in zip(np.indices(shape), centre, (6, 6, 3)))
    vol = (100.0 * (d2 <= 1) + rng.normal(0, 8, shape)).astype(np.float32)
    return Image.from_array(vol, spacing=(1.0, 1.0, 2.5)), centre


def _clicks(path: Path, clicks: list[tuple[list[float], str]]) -> None:
    path.write_text(json.dumps({"coordinates": "index",
                                "clicks": [{"position": p, "label": lab} for p, lab in clicks]}))


@pytest.fixture
def cases(tmp_path):
    """case1, case2 fine; case3's clicks file lies outside the image (a user error)."""
    from volseg.io import write_probability

    data = tmp_path / "data"
    data.mkdir()
    for n in (1, 2, 3):
        img, centre = _volume(n)
        write_probability(img.array[..., 0], img, data / f"case{n}.nii.gz")
        _clicks(data / f"case{n}.json", [(list(centre), "positive"), ([1, 1, 1], "negative")])
    _clicks(data / "case3.json", [([400, 2, 2], "positive")])
    manifest = data / "manifest.csv"
    manifest.write_text("image,clicks,prior,output\n"
                        "case1.nii.gz,case1.json,,\n"
                        "case2.nii.gz,case2.json,,second.nii.gz\n"
                        "case3.nii.gz,case3.json,,\n")
    return manifest


def _statuses(out: Path) -> dict[str, str]:
    report = json.loads((out / "batch_report.json").read_text())
    return {c["name"]: c["status"] for c in report["cases"]}


def _cli(argv: list[str]) -> int:
    from volseg import batch

    parser = argparse.ArgumentParser(prog="volseg")
    batch.register(parser.add_subparsers())
    args = parser.parse_args(["batch", *argv])
    return args.func(args)


def test_batch_report_skip_and_recompute(cases, tmp_path, capsys):
    out = tmp_path / "out"
    assert _cli([str(cases), "--out", str(out), "--quiet"]) == 1  # one case failed
    printed = capsys.readouterr().out
    assert "done" in printed and "FAILED case3.nii.gz" in printed and "outside the image" in printed
    report = json.loads((out / "batch_report.json").read_text())
    assert report["counts"] == {"done": 2, "skipped": 0, "failed": 1, "not run": 0}
    by_name = {c["name"]: c for c in report["cases"]}
    assert "outside the image" in by_name["case3.nii.gz"]["reason"]
    assert Path(by_name["case1.nii.gz"]["output"]) == out / "case1_mask.nii.gz"
    assert (out / "case1_mask.nii.gz").is_file() and (out / "case1_mask.json").is_file()
    assert (out / "second.nii.gz").is_file() and not (out / "case3_mask.nii.gz").exists()
    from volseg.io import read_mask

    assert read_mask(out / "case1_mask.nii.gz")[12, 11, 5] == 1

    # rerun: the two finished cases are skipped, the broken one fails again
    mtime = (out / "case1_mask.nii.gz").stat().st_mtime_ns
    assert _cli([str(cases), "--out", str(out), "--quiet"]) == 1
    assert _statuses(out) == {"case1.nii.gz": "skipped", "case2.nii.gz": "skipped", "case3.nii.gz": "failed"}
    assert (out / "case1_mask.nii.gz").stat().st_mtime_ns == mtime

    # a changed clicks file recomputes that case only; fixing case3 makes the batch succeed
    data = cases.parent
    _clicks(data / "case2.json", [([12, 11, 5], "positive"), ([2, 2, 2], "negative"), ([20, 20, 8], "negative")])
    _clicks(data / "case3.json", [([12, 11, 5], "positive")])
    assert _cli([str(cases), "--out", str(out), "--quiet"]) == 0
    report = json.loads((out / "batch_report.json").read_text())
    by_name = {c["name"]: c for c in report["cases"]}
    statuses = [by_name[n]["status"] for n in ("case1.nii.gz", "case2.nii.gz", "case3.nii.gz")]
    assert statuses == ["skipped", "done", "done"]
    assert by_name["case2.nii.gz"]["reason"] == "clicks changed"


def test_changed_parameters_recompute_and_foreign_output_is_kept(cases, tmp_path):
    from volseg.config import GPConfig

    out = tmp_path / "out"
    rows = read_manifest(cases, out)[:1]
    assert [r.status for r in run_batch(rows, out, progress=False)] == ["done"]
    assert [r.status for r in run_batch(rows, out, progress=False)] == ["skipped"]
    changed = BatchOptions(config=GPConfig(spatial_fraction=0.3))
    r = run_batch(rows, out, changed, progress=False)[0]
    assert (r.status, r.reason) == ("done", "parameters changed")

    # an output volseg did not write (no provenance sidecar) is left alone unless --overwrite
    (out / "case1_mask.json").unlink()
    r = run_batch(rows, out, progress=False)[0]
    assert r.status == "failed" and "without a provenance record" in r.reason
    assert run_batch(rows, out, BatchOptions(overwrite=True), progress=False)[0].status == "done"


def test_manifest_json_paths_and_errors(tmp_path):
    (tmp_path / "sub").mkdir()
    m = tmp_path / "sub" / "m.json"
    m.write_text(json.dumps([{"image": "../a.nrrd", "clicks": "a.json"},
                             {"image": "/x/ct", "clicks": "c.csv", "prior": "p.nii.gz", "output": "ct.nii.gz"}]))
    rows = read_manifest(m, tmp_path / "out")
    assert rows[0].image == str(tmp_path / "a.nrrd") and rows[0].clicks == str(tmp_path / "sub" / "a.json")
    assert rows[0].output == str(tmp_path / "out" / "a_mask.nrrd") and rows[0].prior is None
    assert rows[1].prior == str(tmp_path / "sub" / "p.nii.gz") and rows[1].output.endswith("out/ct.nii.gz")
    assert default_output_name("scan.nii.gz") == "scan_mask.nii.gz"
    assert default_output_name("scan.mhd") == "scan_mask.mha"
    assert default_output_name("photo.jpg") == "photo_mask.png"
    assert default_output_name(tmp_path / "sub") == "sub_mask.nii.gz"  # a DICOM folder

    m.write_text(json.dumps([{"image": "a.nrrd", "clicks": "a.json"}, {"image": "b/a.nrrd", "clicks": "b.json"}]))
    with pytest.raises(InputError, match="both write"):
        read_manifest(m, tmp_path / "out")
    bad = tmp_path / "bad.csv"
    bad.write_text("img,clicks\na.nrrd,a.json\n")
    with pytest.raises(InputError, match="'image' and 'clicks'"):
        read_manifest(bad, tmp_path / "out")
    with pytest.raises(InputError, match="does not exist"):
        read_manifest(tmp_path / "missing.csv", tmp_path / "out")
    # spreadsheets and some editors start a file with a byte-order mark: it is not part of the first column
    excel, bom_json = tmp_path / "excel.csv", tmp_path / "bom.json"
    excel.write_bytes("image,clicks\na.nrrd,a.json\n".encode("utf-8-sig"))
    bom_json.write_bytes(json.dumps([{"image": "a.nrrd", "clicks": "a.json"}]).encode("utf-8-sig"))
    for m in (excel, bom_json):
        assert read_manifest(m, tmp_path / "out")[0].image == str(tmp_path / "a.nrrd")
    latin = tmp_path / "latin.csv"
    latin.write_bytes("image,clicks\nscan\xe9.nrrd,a.json\n".encode("latin-1"))
    with pytest.raises(InputError, match="cannot be parsed"):
        read_manifest(latin, tmp_path / "out")


@pytest.mark.ray
def test_ray_executor_two_workers(cases, tmp_path):
    ray = pytest.importorskip("ray")
    out = tmp_path / "ray_out"
    rows = read_manifest(cases, out)
    try:
        results = run_batch(rows, out, workers=2, executor="ray", progress=False)
        left_running = ray.is_initialized()
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert not left_running  # run_batch shuts down the Ray it started
    status = {r.name: r.status for r in results}
    assert status == {"case1.nii.gz": "done", "case2.nii.gz": "done", "case3.nii.gz": "failed"}
    assert "outside the image" in next(r.reason for r in results if r.status == "failed")
    assert (out / "case1_mask.nii.gz").is_file() and (out / "second.json").is_file()
