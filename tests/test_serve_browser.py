"""`volseg serve` in a real headless Chromium: open a generated image and volume, click on the object,
wait for the overlay, save, check the saved mask against the truth, and time click -> overlay.

Opt-in (``-m browser``; ``make test-browser`` installs Debian's chromium and Playwright first); skips
when no Chromium or no Playwright is found.  Screenshots and the latencies go to
``$VOLSEG_BROWSER_OUT`` (default: a pytest temporary folder).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in (os.environ.get("VOLSEG_CHROMIUM"), shutil.which("chromium"), "/usr/bin/chromium",
                             shutil.which("chromium-browser")) if p and Path(p).is_file()), None)
if CHROMIUM is None:
    pytest.skip("no Chromium found (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
sys.path.insert(0, str(Path(__file__).parent))
from test_serve import disc_image, ellipsoid_volume  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server(root: Path, out: Path, *extra: str, timeout: float = 60):
    port = free_port()
    paths = [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    proc = subprocess.Popen([sys.executable, "-m", "volseg", "serve", str(root), "--port", str(port), "--out", str(out),
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url + "/api/files", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    said = proc.stdout.read() if proc.poll() is not None else ""
                    raise RuntimeError(f"volseg serve did not start: {said}")
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def outdir(tmp_path_factory) -> Path:
    d = Path(os.environ.get("VOLSEG_BROWSER_OUT") or tmp_path_factory.mktemp("browser"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def open_page(browser, url: str, name: str, timeout_s: float = 120):
    page = browser.new_page(viewport={"width": 1300, "height": 760})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/?file={name}")
    page.wait_for_selector("body[data-ready='1']", timeout=timeout_s * 1000)
    return page, errors


def screen_point(page, view: str, index) -> tuple[float, float]:
    """Page coordinates of the centre of voxel ``index`` in ``view`` (the page's own mapping, inverted)."""
    desc = page.evaluate(f"window.volseg.state.views.find(v => v.d.name === '{view}').d")
    shape = page.evaluate("window.volseg.state.info.shape")
    rows, cols = shape[desc["rows"]["axis"]], shape[desc["cols"]["axis"]]
    r, c = index[desc["rows"]["axis"]], index[desc["cols"]["axis"]]
    r = rows - 1 - r if desc["rows"]["flip"] else r
    c = cols - 1 - c if desc["cols"]["flip"] else c
    box = page.locator(f"#view-{view} canvas").bounding_box()
    return box["x"] + (c + 0.5) * box["width"] / cols, box["y"] + (r + 0.5) * box["height"] / rows


def click_and_wait(page, view: str, index, button: str = "left") -> float:
    drawn = page.evaluate("window.volseg.drawn")
    x, y = screen_point(page, view, index)
    page.mouse.click(x, y, button=button)
    # drawn, and the exact whole-volume mask (on a large volume) arrived too
    done = f"window.volseg.drawn > {drawn} && !window.volseg.state.busy && !window.volseg.state.pending"
    page.wait_for_function(done, timeout=120_000)
    return page.evaluate("window.volseg.latencies[window.volseg.latencies.length - 1]")


def save_and_read(page) -> Path:
    page.click("#save")
    page.wait_for_selector("body[data-saved]", timeout=300_000)
    assert page.locator("#download").get_attribute("href").endswith("/download")
    return Path(page.evaluate("document.body.dataset.saved"))


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from PIL import Image as PILImage

    root = tmp_path_factory.mktemp("browser_data")
    img, disc = disc_image((160, 200))
    PILImage.fromarray(img).save(root / "disc.png")
    vol, ell = ellipsoid_volume()
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), root / "ellipsoid.nii.gz")
    (root / "broken.nii.gz").write_bytes(b"not a NIfTI file")
    # one wide spatial RBF instead of the default: two clicks fill the small generated ellipsoid
    (root.parent / "serve_test.yaml").write_text("gp:\n  spatial_fraction: 0.3\n  kernel: rbf\n")
    return {"root": root, "disc": disc, "ellipsoid": ell, "config": root.parent / "serve_test.yaml"}


def test_image_and_volume_click_save(browser, small_data, outdir):
    out = outdir / "saved"
    with server(small_data["root"], out, "--config", str(small_data["config"])) as url:
        page, errors = open_page(browser, url, "disc.png")
        truth = small_data["disc"]
        centre = [int(v) for v in np.argwhere(truth).mean(0).round()]
        click_and_wait(page, "image", centre)
        click_and_wait(page, "image", [5, 5], button="right")
        page.screenshot(path=str(outdir / "serve-image.png"))
        from PIL import Image as PILImage

        mask = np.asarray(PILImage.open(save_and_read(page))) > 0
        assert iou(mask, truth) > 0.9, iou(mask, truth)
        page.close()

        page, errors2 = open_page(browser, url, "ellipsoid.nii.gz")
        truth = small_data["ellipsoid"]
        centre = [int(v) for v in np.argwhere(truth).mean(0).round()]
        assert page.evaluate("window.volseg.state.views.map(v => v.d.name)") == ["axial", "coronal", "sagittal"]
        letters = page.locator("#view-axial .letter").all_inner_texts()
        assert sorted(letters) == ["A", "L", "P", "R"]
        click_and_wait(page, "axial", centre)
        click_and_wait(page, "coronal", [centre[0], centre[1], centre[2] + 3])
        page.select_option("#window", "bone")
        page.wait_for_timeout(300)
        page.select_option("#window", "auto")
        page.check("#uncertainty")
        page.wait_for_timeout(500)
        page.screenshot(path=str(outdir / "serve-volume-uncertainty.png"))
        page.uncheck("#uncertainty")
        page.wait_for_timeout(300)
        page.screenshot(path=str(outdir / "serve-volume.png"))
        saved = save_and_read(page)
        out_img = nib.load(saved)
        assert np.allclose(out_img.affine, np.diag([1.0, 1.0, 2.0, 1.0]))
        assert iou(np.asarray(out_img.dataobj) > 0, truth) > 0.9
        assert json.loads(saved.with_name(saved.name.replace(".nii.gz", ".json")).read_text())["clicks"]
        page.select_option("#file", "broken.nii.gz")  # a corrupt file: a message, and the page carries on
        page.click("#open")
        page.wait_for_selector("#message.error", timeout=30_000)
        assert "broken.nii.gz" in page.inner_text("#message")
        page.select_option("#file", "ellipsoid.nii.gz")
        page.click("#open")
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        page.close()
    assert not errors and not errors2, errors + errors2


def vol_body(n: int) -> np.ndarray:
    x, y = np.meshgrid(*[np.arange(n, dtype=np.float32) / n - 0.5] * 2, indexing="ij")
    return ((x / 0.45) ** 2 + (y / 0.35) ** 2 < 0.8)[:, :, None]  # well inside the body's edge


def ct_volume(n: int = 256, seed: int = 0):
    """A CT-like volume (HU): body ellipse of soft tissue, a liver-like organ, noise; returns (vol, organ)."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) / n - 0.5] * 3, indexing="ij", sparse=True)
    vol = np.full((n, n, n), -1000.0, np.float32)
    vol[np.broadcast_to((x / 0.45) ** 2 + (y / 0.35) ** 2 < 1, vol.shape)] = 40.0
    organ = ((x + 0.12) / 0.15) ** 2 + ((y - 0.05) / 0.12) ** 2 + (z / 0.25) ** 2 < 1
    vol[organ] = 120.0
    vol += rng.standard_normal(vol.shape, dtype=np.float32) * 15.0
    return vol, organ


def test_click_to_overlay_latency_on_a_256_cubed_volume(browser, outdir, tmp_path):
    n = int(os.environ.get("VOLSEG_BROWSER_SIZE", 256))
    vol, organ = ct_volume(n)
    nib.save(nib.Nifti1Image(vol, np.diag([0.8, 0.8, 1.0, 1.0])), tmp_path / "ct.nii.gz")
    del vol
    with server(tmp_path, tmp_path / "out") as url:
        t0 = time.perf_counter()
        page, errors = open_page(browser, url, "ct.nii.gz", timeout_s=600)
        open_s = time.perf_counter() - t0
        z = n // 2
        body = np.broadcast_to(vol_body(n), organ.shape)[:, :, z] & ~organ[:, :, z]
        rng = np.random.default_rng(0)
        inside, outside = np.argwhere(organ[:, :, z]), np.argwhere(body)
        for i in range(10):  # two positives, then one negative, ...
            positive = i % 3 != 2
            a, b = (inside if positive else outside)[rng.integers(len(inside if positive else outside))]
            click_and_wait(page, "axial", [int(a), int(b), z], button="left" if positive else "right")
        centre = [int(v) for v in np.argwhere(organ[::2, ::2, ::2]).mean(0) * 2]
        page.keyboard.down("Control")
        page.mouse.click(*screen_point(page, "axial", centre))
        page.keyboard.up("Control")
        page.wait_for_timeout(1500)
        lat = page.evaluate("window.volseg.latencies")
        exact = page.evaluate("window.volseg.exactLatencies")
        page.screenshot(path=str(outdir / "serve-ct256.png"))
        page.close()
    record = {"size": n, "open_seconds": round(open_s, 1), "click_to_overlay_ms": [round(v) for v in lat],
              "p50_ms": round(float(np.median(lat))), "p90_ms": round(float(np.percentile(lat, 90))),
              "click_to_exact_mask_ms_p50": round(float(np.median(exact))) if exact else None,
              "cpus": os.cpu_count(), "note": "wall-clock in the browser; a shared machine gives contended numbers"}
    (outdir / "latency.json").write_text(json.dumps(record, indent=1))
    print("\nlatency", json.dumps(record))
    assert not errors, errors
    assert len(lat) == 10 and all(v > 0 for v in lat)


def test_the_demo_volume_with_the_demo_clicks(browser, outdir, tmp_path):
    """The page on `volseg demo`'s generated MR-like volume, default settings, four clicks like the
    demo's (two in the lesion, two outside), and the suggested next click (the README's screenshot)."""
    from volseg.demo import synthetic_volume

    vol, lesion = synthetic_volume()
    nib.save(nib.Nifti1Image(vol, np.diag([0.9, 0.9, 2.5, 1.0])), tmp_path / "synthetic_t2.nii.gz")
    centre = [int(v) for v in np.argwhere(lesion).mean(0).round()]
    with server(tmp_path, tmp_path / "out") as url:
        page, errors = open_page(browser, url, "synthetic_t2.nii.gz")
        page.keyboard.down("Control")
        page.mouse.click(*screen_point(page, "axial", centre))
        page.keyboard.up("Control")
        clicks = [(tuple(centre), True), ((10, 48, centre[2]), False),
                  ((centre[0], centre[1], centre[2] + 5), True), ((48, centre[1], 30), False)]
        for (position, positive), view in zip(clicks, ("axial", "axial", "sagittal", "coronal")):
            click_and_wait(page, view, list(position), button="left" if positive else "right")
        page.check("#suggest")
        page.wait_for_function("window.volseg.state.suggestion !== null", timeout=60_000)
        page.wait_for_timeout(1000)
        page.screenshot(path=str(outdir / "serve-demo-volume.png"))
        saved = save_and_read(page)
        mask = np.asarray(nib.load(saved).dataobj) > 0
        page.close()
    assert not errors, errors
    # the page shows the library's answer: the same clicks through a Session give the same mask
    from volseg import Session
    from volseg.clicks import load_clicks
    from volseg.io import read_image

    # the clicks the page made (a slice's screen point lands within a voxel or two of the one aimed at)
    made = load_clicks(saved.with_name("synthetic_t2_clicks.json"))
    assert [c.positive for c in made] == [p for _, p in clicks]
    assert all(np.abs(np.subtract(c.position, p)).max() <= 2 for c, (p, _) in zip(made, clicks))
    session = Session().set_image(read_image(tmp_path / "synthetic_t2.nii.gz"))
    for c in made:  # one at a time, as the page got them: in a volume each click's labels are held
        session.add_click(c.position, c.positive)
    assert (mask == (session.mask() > 0)).mean() > 0.999
    # and it filled the lesion
    assert 2 * (mask & lesion).sum() / (mask.sum() + lesion.sum()) > 0.8


def test_video_click_propagate_and_correct(browser, outdir, tmp_path):
    from PIL import Image as PILImage

    from volseg.video.synthetic import moving_shapes

    frames, labels = moving_shapes(8, 96, 128, seed=0)
    (tmp_path / "clip").mkdir()
    for t, f in enumerate(frames):
        PILImage.fromarray(f).save(tmp_path / "clip" / f"{t:05d}.png")
    with server(tmp_path, tmp_path / "out") as url:
        page, errors = open_page(browser, url, "clip")
        assert page.locator("#propagate").is_visible()
        disc = [int(v) for v in np.argwhere(labels[0] == 1).mean(0).round()]
        click_and_wait(page, "frame", disc)
        drawn = page.evaluate("window.volseg.drawn")
        page.click("#propagate")
        page.wait_for_function(f"window.volseg.drawn > {drawn} && !window.volseg.state.busy", timeout=120_000)
        page.locator("#view-frame input[type=range]").fill("5")
        page.wait_for_function("window.volseg.state.views[0].index === 5")
        page.wait_for_timeout(800)
        later = [int(v) for v in np.argwhere(labels[5] == 2).mean(0).round()]
        page.select_option("#object", "1")
        page.click("#new-object")
        click_and_wait(page, "frame", later)  # a second object, clicked on frame 5
        page.screenshot(path=str(outdir / "serve-video.png"))
        saved = save_and_read(page)
        page.close()
    assert not errors, errors
    masks = sorted(saved.glob("*.png"))
    assert len(masks) == 8
    m5 = np.asarray(PILImage.open(saved / "00005.png"))
    assert iou(m5 == 2, labels[5] == 2) > 0.6 and iou(m5 == 1, labels[5] == 1) > 0.5
