"""`volseg serve` through the ASGI test client: open, click, undo, save, and the bad inputs."""
from __future__ import annotations

import io
import json
import os

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("starlette")
try:  # starlette's test client runs on httpx2 (or, older, httpx)
    import httpx2  # noqa: F401
except ImportError:
    pytest.importorskip("httpx")
from PIL import Image as PILImage  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from volseg.cli import main  # noqa: E402
from volseg.config import GPConfig  # noqa: E402
from volseg.image import Image  # noqa: E402
from volseg.serve import (  # noqa: E402
    create_app,  # noqa: E402
    render,
    sessions,
)
from volseg.serve.cli import is_loopback  # noqa: E402

# one wide spatial RBF GP instead of the default (for volumes the GMRF sum, which fills less of a generated
# shape): two clicks fill the small generated ellipsoid (these tests are about what the server sends, not
# about how far a click reaches)
SETTINGS = {"features": "filterbank", "device": "cpu",
            "config": GPConfig(spatial_fraction=0.3, kernel="rbf", latent="gp")}


def disc_image(shape=(64, 80), seed=0):
    rng = np.random.default_rng(seed)
    r, c = np.indices(shape)
    truth = (r - 30) ** 2 + (c - 36) ** 2 < 15 ** 2
    img = np.clip(60 + 140 * truth + 12 * rng.standard_normal(shape), 0, 255).astype(np.uint8)
    return img, truth


def ellipsoid_volume(shape=(36, 32, 20), spacing=(1.0, 1.0, 2.0), seed=0):
    rng = np.random.default_rng(seed)
    g = np.indices(shape).astype(float) * np.asarray(spacing)[:, None, None, None]
    centre = (np.asarray(shape) * spacing / 2)[:, None, None, None]
    radii = 0.25 * np.asarray(shape) * spacing  # a quarter of the extent along each axis
    truth = (((g - centre) / radii[:, None, None, None]) ** 2).sum(0) < 1
    vol = (100.0 + 300.0 * truth + 20.0 * rng.standard_normal(shape)).astype(np.float32)
    return vol, truth


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("served")
    img, disc = disc_image()
    PILImage.fromarray(img).save(root / "disc.png")
    vol, ell = ellipsoid_volume()
    nib.save(nib.Nifti1Image(vol, np.diag([1.0, 1.0, 2.0, 1.0])), root / "vol.nii.gz")
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip at all")
    from volseg.video.synthetic import moving_shapes

    frames, labels = moving_shapes(6, 48, 64, seed=0)
    (root / "clip").mkdir()
    for t, f in enumerate(frames):
        PILImage.fromarray(f).save(root / "clip" / f"{t:05d}.png")
    outside = tmp_path_factory.mktemp("outside")
    PILImage.fromarray(img).save(outside / "secret.png")
    os.symlink(outside / "secret.png", root / "escape.png")
    os.symlink(outside, root / "escape_dir")
    return {"root": root, "disc": disc, "ellipsoid": ell, "labels": labels, "out": tmp_path_factory.mktemp("out")}


@pytest.fixture()
def client(served):
    app = create_app(served["root"], out=served["out"], settings=SETTINGS)
    with TestClient(app) as c:
        yield c


def decode(data_url_or_bytes) -> np.ndarray:
    if isinstance(data_url_or_bytes, str):
        import base64

        data_url_or_bytes = base64.b64decode(data_url_or_bytes.split(",", 1)[1])
    return np.asarray(PILImage.open(io.BytesIO(data_url_or_bytes)))


def iou(a, b):
    return (a & b).sum() / max(1, (a | b).sum())


def test_listing_shows_images_volumes_and_videos_only_under_the_root(client):
    files = {f["path"]: f["kind"] for f in client.get("/api/files").json()["files"]}
    assert files["disc.png"] == "image" and files["vol.nii.gz"] == "volume" and files["clip"] == "video"
    assert not any(p.startswith("escape_dir") for p in files)  # a symlinked folder is not entered
    assert "escape.png" not in files  # a symlink out of the root is not listed


def test_page_and_its_code_come_from_the_package(client):
    page = client.get("/")
    assert page.status_code == 200 and "/static/app.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing fetched from elsewhere
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "fetch(" in js.text and "https://" not in js.text


@pytest.mark.parametrize("path, status", [("../outside/secret.png", 403), ("/etc/passwd", 403),
                                          ("escape.png", 403), ("escape_dir/secret.png", 403),
                                          ("missing.png", 404), ("", 403)])
def test_paths_outside_the_root_or_missing_are_refused(client, path, status):
    r = client.post("/api/open", json={"path": path})
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_a_single_served_file_is_all_that_opens(served):
    with TestClient(create_app(served["root"] / "disc.png", out=served["out"])) as c:
        assert [f["path"] for f in c.get("/api/files").json()["files"]] == ["disc.png"]
        assert c.post("/api/open", json={"path": "vol.nii.gz"}).status_code == 403
        sid = c.post("/api/open", json={"path": "disc.png"}).json()["id"]
        assert c.get(f"/api/s/{sid}/image", params={"view": "image", "width": "wide"}).status_code == 400


def test_2d_open_click_undo_save(client, served):
    info = client.post("/api/open", json={"path": "disc.png"}).json()
    sid = info["id"]
    assert info["kind"] == "image" and info["shape"] == [64, 80] and [v["name"] for v in info["views"]] == ["image"]
    base = decode(client.get(f"/api/s/{sid}/image", params={"view": "image", "width": 255, "level": 127.5}).content)
    assert base.shape[:2] == (64, 80)
    r = client.post(f"/api/s/{sid}/click", json={"position": [30, 36], "positive": True, "shown": {"image": 0}}).json()
    assert r["seconds"] > 0 and len(r["clicks"]) == 1 and r["exact"]
    shown = decode(r["overlays"]["image"])[..., 3] > 0
    assert iou(shown, served["disc"]) > 0.9
    r = client.post(f"/api/s/{sid}/click", json={"position": [5, 5], "positive": False, "shown": {"image": 0}}).json()
    assert len(r["clicks"]) == 2
    r = client.post(f"/api/s/{sid}/undo", json={"shown": {"image": 0}}).json()
    assert len(r["clicks"]) == 1
    unc = decode(client.get(f"/api/s/{sid}/overlay", params={"view": "image", "layer": "uncertainty"}).content)
    assert unc.shape == (64, 80, 4)
    g = client.post(f"/api/s/{sid}/suggest", json={}).json()
    assert len(g["position"]) == 2
    saved = client.post(f"/api/s/{sid}/save").json()
    mask = np.asarray(PILImage.open(saved["mask"])) > 0
    assert iou(mask, served["disc"]) > 0.9
    sidecar = json.loads(open(saved["sidecar"]).read())
    assert sidecar["clicks"][0]["position"] == [30.0, 36.0] and sidecar["input"].endswith("disc.png")
    assert client.get(saved["download"]).content == open(saved["mask"], "rb").read()
    r = client.post(f"/api/s/{sid}/reset", json={"shown": {"image": 0}}).json()
    assert r["clicks"] == [] and not (decode(r["overlays"]["image"])[..., 3] > 0).any()
    assert client.post(f"/api/s/{sid}/save").status_code == 400  # nothing to save


def test_volume_sends_only_the_shown_slices_and_saves_in_its_geometry(client, served, monkeypatch):
    monkeypatch.setattr(sessions, "EXACT_VOXELS", 0)  # take the large-volume path: a preview first
    info = client.post("/api/open", json={"path": "vol.nii.gz"}).json()
    sid, truth = info["id"], served["ellipsoid"]
    assert info["kind"] == "volume" and not info["exact"]
    views = {v["name"]: v for v in info["views"]}
    assert set(views) == {"axial", "coronal", "sagittal"}
    assert views["axial"]["letters"] == {"top": "A", "bottom": "P", "left": "R", "right": "L"}
    assert views["coronal"]["row_spacing"] == 2.0  # physical aspect: rows of the coronal view run along k
    centre = [int(v) for v in np.argwhere(truth).mean(0).round()]
    shown = {"axial": centre[2], "coronal": centre[1], "sagittal": centre[0]}
    for position in (centre, [centre[0], centre[1], centre[2] + 3]):
        r = client.post(f"/api/s/{sid}/click", json={"position": position, "positive": True, "shown": shown}).json()
    assert set(r["overlays"]) == set(shown)
    for name, index in shown.items():
        v = render.View(**{**views[name], "rows": render.Axis(**views[name]["rows"]),
                           "cols": render.Axis(**views[name]["cols"])})
        want = render.plane(truth, v, index)
        preview = decode(r["overlays"][name])[..., 3] > 0
        exact = decode(client.get(f"/api/s/{sid}/overlay", params={"view": name, "index": index}).content)[..., 3] > 0
        assert preview.shape == exact.shape == want.shape
        assert iou(preview, exact) > 0.9 and iou(exact, want) > 0.9
    assert client.get(f"/api/s/{sid}/image", params={"view": "axial", "index": 999}).status_code == 400
    assert client.get(f"/api/s/{sid}/image", params={"view": "nope", "index": 1}).status_code == 400
    saved = client.post(f"/api/s/{sid}/save").json()
    out = nib.load(saved["mask"])
    assert np.allclose(out.affine, np.diag([1.0, 1.0, 2.0, 1.0]))
    assert iou(np.asarray(out.dataobj) > 0, truth) > 0.9


def test_bad_inputs_give_a_message_and_leave_other_sessions_alone(client):
    sid = client.post("/api/open", json={"path": "disc.png"}).json()["id"]
    r = client.post("/api/open", json={"path": "broken.nii.gz"})
    assert r.status_code == 400 and "broken.nii.gz" in r.json()["error"]
    r = client.post(f"/api/s/{sid}/click", json={"position": [500, 3], "shown": {"image": 0}})
    assert r.status_code == 400 and "outside the image" in r.json()["error"]
    for bad in ({"position": ["x", 1]}, {"position": [1]}, {"position": None}, {"position": [1, 1], "object": 0}):
        assert client.post(f"/api/s/{sid}/click", json=bad).status_code == 400
    assert client.post(f"/api/s/{sid}/click", content=b"{not json").status_code == 400
    assert client.post(f"/api/s/{sid}/click", content=b"[" + b"1," * 40000 + b"1]").status_code == 400  # too big
    assert client.post(f"/api/s/{sid}/undo", json={}).status_code == 400  # nothing to undo
    r = client.post(f"/api/s/{sid}/click", json={"position": [30, 36], "shown": {"image": 0}})
    assert r.status_code == 200  # still working
    assert client.post("/api/s/nope/click", json={"position": [1, 1]}).status_code == 404


def test_a_refused_request_changes_nothing(client):
    """A click whose views on screen are wrong is refused before it lands: a 400 whose click stayed in the
    session would show up, unasked, in the next answer."""
    sid = client.post("/api/open", json={"path": "vol.nii.gz"}).json()["id"]
    views = [v["name"] for v in client.post("/api/open", json={"path": "vol.nii.gz"}).json()["views"]]
    ok = client.post(f"/api/s/{sid}/click", json={"position": [18, 16, 10], "shown": {views[0]: 10}})
    assert ok.status_code == 200 and len(ok.json()["clicks"]) == 1
    bad = ({"nope": 3}, {views[0]: 999}, {views[0]: "x"}, "x")
    for shown in bad:
        r = client.post(f"/api/s/{sid}/click", json={"position": [5, 5, 5], "positive": False, "shown": shown})
        assert r.status_code == 400, shown
    r = client.post(f"/api/s/{sid}/click", json={"position": [20, 16, 10], "shown": {}})
    assert [c["position"] for c in r.json()["clicks"]] == [[18.0, 16.0, 10.0], [20.0, 16.0, 10.0]]
    for shown in bad:  # nor is an undo with them carried out
        assert client.post(f"/api/s/{sid}/undo", json={"shown": shown}).status_code == 400, shown
    r = client.post(f"/api/s/{sid}/undo", json={"shown": {}})
    assert [c["position"] for c in r.json()["clicks"]] == [[18.0, 16.0, 10.0]]


def test_volume_over_the_memory_budget_is_a_message(served):
    app = create_app(served["root"], out=served["out"], settings={"config": GPConfig(memory_budget="100KB")})
    with TestClient(app) as c:
        r = c.post("/api/open", json={"path": "vol.nii.gz"})
        assert r.status_code == 400 and "memory budget" in r.json()["error"]
        assert c.post("/api/open", json={"path": "disc.png"}).status_code in (200, 400)  # server still answers


def test_idle_sessions_are_freed_and_their_number_is_bounded(served):
    app = create_app(served["root"], out=served["out"], idle_timeout=60, max_sessions=2)
    with TestClient(app) as c:
        store = app.state.store
        a = c.post("/api/open", json={"path": "disc.png"}).json()["id"]
        b = c.post("/api/open", json={"path": "disc.png"}).json()["id"]
        assert c.post(f"/api/s/{a}/ping").status_code == 200  # a is now the most recently used
        c2 = c.post("/api/open", json={"path": "disc.png"}).json()["id"]
        assert len(store) == 2 and b not in store and a in store and c2 in store
        import time

        assert store.sweep(now=time.monotonic() + 3600) and len(store) == 0
        r = c.post(f"/api/s/{a}/click", json={"position": [1, 1]})
        assert r.status_code == 404 and "expired" in r.json()["error"]
        d = c.post("/api/open", json={"path": "disc.png"}).json()["id"]
        assert c.post(f"/api/s/{d}/close").json() == {"closed": True} and len(store) == 0


def test_video_click_propagate_save(client, served):
    info = client.post("/api/open", json={"path": "clip"}).json()
    sid = info["id"]
    assert info["kind"] == "video" and info["frames"] == 6
    r = client.post(f"/api/s/{sid}/click", json={"position": [5, 5], "frame": 0, "object": 300})
    assert r.status_code == 400 and "object ids 1-255" in r.json()["error"]  # a palette PNG could not save it
    labels = served["labels"]
    pos = [int(v) for v in np.argwhere(labels[0] == 1).mean(0).round()]
    r = client.post(f"/api/s/{sid}/click", json={"position": pos, "frame": 0, "shown": {"frame": 0}}).json()
    assert iou(decode(r["overlays"]["frame"])[..., 3] > 0, labels[0] == 1) > 0.7
    r = client.post(f"/api/s/{sid}/click", json={"position": pos, "frame": 9, "shown": {"frame": 0}})
    assert r.status_code == 400 and "frames" in r.json()["error"]
    r = client.post(f"/api/s/{sid}/propagate", json={"shown": {"frame": 4}}).json()
    assert r["frames"] == 5 and iou(decode(r["overlays"]["frame"])[..., 3] > 0, labels[4] == 1) > 0.6
    frame4 = decode(client.get(f"/api/s/{sid}/image", params={"view": "frame", "index": 4}).content)
    assert frame4.shape == (48, 64, 3)
    saved = client.post(f"/api/s/{sid}/save").json()
    pngs = sorted(p for p in os.listdir(saved["mask"]) if p.endswith(".png"))
    assert len(pngs) == 6
    assert client.get(saved["download"]).content[:2] == b"PK"
    r = client.post(f"/api/s/{sid}/undo", json={"shown": {"frame": 0}}).json()
    assert r["clicks"] == [] and r["annotated"] == []


def test_views_follow_the_world_axes_of_a_permuted_volume():
    # array axis 0 runs superior->inferior, axis 1 left->right, axis 2 posterior->anterior
    direction = np.array([[0, 1, 0], [0, 0, -1], [-1, 0, 0]], float)
    img = Image(np.zeros((4, 5, 6, 1), np.float32), spacing=(3.0, 1.0, 2.0), direction=direction)
    views = {v.name: v for v in render.views_for(img)}
    assert views["axial"].axis == 0 and views["axial"].rows == render.Axis(2, True)
    assert views["axial"].cols == render.Axis(1, False)
    a = np.arange(4 * 5 * 6).reshape(4, 5, 6)
    assert render.plane(a, views["axial"], 1).shape == (6, 5)
    assert render.plane(a, views["sagittal"], 2).shape == (4, 6)  # rows along axis 0 (S-I), cols along A-P
    assert views["coronal"].row_spacing == 3.0 and views["coronal"].letters["top"] == "S"


def test_cli_refuses_a_missing_path_and_knows_loopback(capsys):
    assert main(["serve", "/definitely/not/here"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4")


def test_a_session_without_a_cached_mean_map_falls_back_to_its_mask():
    vol, truth = ellipsoid_volume()

    class Plain:  # a session without raw labels: latent_labels falls back to the mask
        image = Image.from_array(vol)
        objects = [1]

    view = render.views_for(Plain.image)[0]
    assert sessions.latent_labels(Plain(), view, 5) is None
    state = sessions.ImageState.__new__(sessions.ImageState)
    state.session, state.version, state.exact, state._mask = Plain(), 0, False, None
    state.mask = lambda: truth.astype(np.uint8)
    assert (state.labels(view, 5, exact=False) == render.plane(truth, view, 5)).all()


def test_one_config_file_sets_the_gp_and_the_video_settings(tmp_path, monkeypatch):
    """`volseg serve --config F`: F's gp: section reaches the image sessions and its video: section the
    video ones (configs/video_fast.yaml alone turns the video edge cut off and leaves the GP's defaults)."""
    import uvicorn

    import volseg.serve.app as app_module
    from volseg.video.config import read_video_config

    seen = {}
    monkeypatch.setattr(app_module, "create_app", lambda root, **kw: seen.update(kw) or object())
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)
    both = tmp_path / "both.yaml"
    both.write_text("gp:\n  noise: 0.05\nvideo:\n  edge_strength: 5\n  budget: 400\n")
    assert main(["serve", str(tmp_path), "--config", str(both)]) == 0
    assert seen["settings"]["config"].noise == 0.05
    assert seen["video_config"].edge_strength == 5 and seen["video_config"].budget == 400
    fast = os.path.join(os.path.dirname(__file__), "..", "configs", "video_fast.yaml")
    assert GPConfig.from_yaml(fast) == GPConfig() and read_video_config(fast, []).edge_strength == 0
    gp_only = tmp_path / "gp.yaml"
    gp_only.write_text("gp:\n  noise: 0.05\n")
    assert read_video_config(str(gp_only), []) == read_video_config(None, [])


def test_video_clicked_frames_use_the_video_settings_features_or_the_servers(served):
    """A clicked frame's 2D session: --config's video: session_features where it names some, else the
    server's --features (as images get)."""
    from volseg.serve.sessions import VideoState
    from volseg.video import VideoConfig

    clip = served["root"] / "clip"
    plain = VideoState(clip, "clip", {"features": "filterbank"})
    assert plain.seg.config.session_features == "filterbank"
    server = VideoState(clip, "clip", {"features": "learned2d"})
    assert server.seg.config.session_features == "learned2d"
    own = VideoState(clip, "clip", {"features": "filterbank"},
                     video_config=VideoConfig(session_features="learned2d+filterbank"))
    assert own.seg.config.session_features == "learned2d+filterbank"
    # video settings that name the default explicitly win over the server's --features too
    bank = VideoState(clip, "clip", {"features": "learned2d"}, video_config=VideoConfig(session_features="filterbank"))
    assert bank.seg.config.session_features == "filterbank"
    for state in (plain, server, own, bank):
        state.seg.close()


def test_serve_resolves_the_clicked_frames_features_from_config_and_features(tmp_path, monkeypatch):
    """`volseg serve --features F [--config C]`: the video settings get C's video: session_features where C
    names them (even the default, filterbank), else F."""
    import uvicorn

    import volseg.serve.app as app_module

    seen = {}
    monkeypatch.setattr(app_module, "create_app", lambda root, **kw: seen.update(kw) or object())
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)
    named = tmp_path / "named.yaml"
    named.write_text("video:\n  session_features: filterbank\n")
    other = tmp_path / "other.yaml"
    other.write_text("video:\n  budget: 400\n")
    for config, expected in ((named, "filterbank"), (other, "learned2d"), (None, "learned2d")):
        args = ["serve", str(tmp_path), "--features", "learned2d"] + (["--config", str(config)] if config else [])
        assert main(args) == 0
        assert seen["video_config"].session_features == expected, config
