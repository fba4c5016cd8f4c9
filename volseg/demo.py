"""`volseg demo`: the main job on the embedded default, on data that needs no download.

Case 1 is a real photograph shipped with scikit-image (``skimage.data.coffee``): the cup and
saucer from six scripted clicks.  Case 2 is a generated MR-like volume (anisotropic spacing,
written as NIfTI) with a known lesion, segmented from a clicks file exactly as a user would run
``volseg segment``.  Each case writes a mask, a probability map, provenance and an overview PNG.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from scipy.ndimage import gaussian_filter
from skimage import data

from .clicks import Click
from .io import check_folder_path, write_mask, write_probability
from .segment import segment_file
from .session import Session

COFFEE_CLICKS = [  # (row, col), positive?  -- cup and saucer vs. the wooden table
    ((150, 290), True), ((60, 520), False), ((230, 190), True), ((350, 60), False),
    ((285, 440), True), ((30, 40), False),
]


def synthetic_volume(shape=(96, 96, 40), spacing=(0.9, 0.9, 2.5), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A smooth 'brain' with a brighter ellipsoidal lesion and noise; returns (volume, lesion mask)."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij"), -1)
    centre = np.array([n * s / 2 for n, s in zip(shape, spacing)])
    head = (((grid - centre) / (0.45 * np.array(shape) * spacing)) ** 2).sum(-1) < 1
    lesion_c = centre + np.array([12.0, -8.0, 6.0])
    lesion = (((grid - lesion_c) / np.array([14.0, 10.0, 18.0])) ** 2).sum(-1) < 1
    vol = 200.0 * head + 180.0 * lesion + 25.0 * rng.standard_normal(shape)
    return gaussian_filter(vol, 0.7).astype(np.float32), lesion


def _overview(path: Path, image: np.ndarray, masks: dict[str, np.ndarray], prob: np.ndarray, unc: np.ndarray,
              clicks: list[Click], title: str) -> None:
    """Image with clicks, one panel per mask (e.g. one per feature set, same clicks), probability and
    uncertainty of the first."""
    import matplotlib  # noqa: PLC0415 -- slow to import; only `volseg demo` draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- after choosing the Agg backend

    n = 3 + len(masks)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 4.4))
    shown = image if image.ndim == 3 and image.shape[-1] == 3 else image.squeeze()
    for ax in axes:
        ax.imshow(shown, cmap="gray")
        ax.set_axis_off()
    for ax, mask in zip(axes[1:], masks.values()):
        ax.imshow(np.ma.masked_equal(mask, 0), cmap="autumn", alpha=0.5, vmin=0, vmax=max(1, mask.max()))
        ax.contour(mask > 0, [0.5], colors="cyan", linewidths=0.8)
    axes[-2].imshow(prob, cmap="magma", vmin=0, vmax=1)
    axes[-1].imshow(unc, cmap="viridis")
    for c in clicks:
        axes[0].plot(c.position[1], c.position[0], "o", ms=9, mec="white", mfc="lime" if c.positive else "red")
    for ax, t in zip(axes, ("image + clicks", *masks, "probability", "uncertainty (posterior std)")):
        ax.set_title(t)
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name("." + path.name)
    fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)
    tmp.replace(path)


def _report(name: str, session: Session, extra: str = "") -> None:
    t = session.timings
    per = ", ".join(f"{x * 1000:.0f}" for x in t)
    print(f"[{name}] features {session.feature_seconds:.2f} s; per-click ms: {per}; {extra}")


def run_demo(out: str | Path = "volseg-demo", *, device: str = "cpu", overwrite: bool = True) -> dict:
    out = Path(out)
    check_folder_path(out, f"the demo into {out}")
    out.mkdir(parents=True, exist_ok=True)
    results = {}

    # -- case 1: a real photograph -----------------------------------------------------------------
    photo = data.coffee()
    PILImage.fromarray(photo).save(out / "coffee.png")  # the input too, so `volseg serve` can open it
    s = Session(device=device)
    s.set_image(photo)
    for pos, positive in COFFEE_CLICKS:
        s.add_click(pos, positive)
    img = s.image
    mask_path = write_mask(s.mask(), img, out / "coffee_mask.png", overwrite=overwrite)
    write_probability(s.probability(), img, out / "coffee_prob.png", overwrite=overwrite)
    # the packaged learned embedding stacked with the bank, same clicks, so a user sees what each does
    learned = Session(features="learned2d+filterbank", device=device)
    learned.set_image(photo)
    for pos, positive in COFFEE_CLICKS:
        learned.add_click(pos, positive)
    write_mask(learned.mask(), img, out / "coffee_mask_learned.png", overwrite=overwrite)
    _overview(out / "coffee_overview.png", photo,
              {"mask: filterbank (default)": s.mask(), "mask: learned2d+filterbank": learned.mask()},
              s.probability(), s.uncertainty(), s.clicks, "skimage.data.coffee: cup and saucer from 6 clicks")
    hint = s.suggest_click()
    _report("coffee 2D", s, f"mask {mask_path}; suggested next click at {hint.position}")
    _report("coffee 2D, learned2d+filterbank", learned, f"mask {out / 'coffee_mask_learned.png'}")
    results["coffee"] = {"mask": str(mask_path), "click_seconds": s.timings}

    # -- case 2: a generated volume, through the same path as `volseg segment` ------------------------
    import nibabel as nib  # noqa: PLC0415 -- slow to import; only `volseg demo` needs it here

    vol, truth = synthetic_volume()
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    vol_path = out / "synthetic_t2.nii.gz"
    nib.save(nib.Nifti1Image(vol, affine), vol_path)
    centre = np.argwhere(truth).mean(0).round().astype(int)
    clicks = [
        {"position": centre.tolist(), "label": "positive"},
        {"position": [10, 48, 20], "label": "negative"},
        {"position": (centre + [0, 0, 5]).tolist(), "label": "positive"},
        {"position": [48, 20, 20], "label": "negative"},
    ]
    clicks_path = out / "synthetic_clicks.json"
    clicks_path.write_text(json.dumps({"coordinates": "index", "clicks": clicks}, indent=1))
    rec = segment_file(vol_path, clicks_path, out / "synthetic_mask.nii.gz", prob=out / "synthetic_prob.nii.gz",
                       uncertainty=out / "synthetic_std.nii.gz", device=device, overwrite=overwrite)
    mask = np.asarray(nib.load(out / "synthetic_mask.nii.gz").dataobj) > 0
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    prob = np.asarray(nib.load(out / "synthetic_prob.nii.gz").dataobj)
    std = np.asarray(nib.load(out / "synthetic_std.nii.gz").dataobj)
    z = int(centre[2])
    vol_clicks = [Click(tuple(c["position"][:2]), c["label"] == "positive") for c in clicks if c["position"][2] == z]
    _overview(out / "synthetic_overview.png", vol[:, :, z], {"mask": mask[:, :, z].astype(np.uint8)}, prob[:, :, z],
              std[:, :, z], vol_clicks, f"generated volume, slice k={z}: Dice {dice:.3f} after {len(clicks)} clicks")
    per = ", ".join(f"{x * 1000:.0f}" for x in rec["click_seconds"])
    print(f"[synthetic 3D] features {rec['feature_seconds']:.2f} s; per-click ms: {per}; Dice {dice:.3f}; "
          f"mask {rec['outputs']['mask']}")
    results["synthetic"] = {"mask": rec["outputs"]["mask"], "dice": float(dice), "click_seconds": rec["click_seconds"]}
    print(f"overviews: {out / 'coffee_overview.png'}, {out / 'synthetic_overview.png'}")
    command = sys.argv[0] if Path(sys.argv[0]).name == "volseg" else "volseg"  # .venv/bin/volseg under make demo
    print(f"click on these in a browser: {command} serve {out}   (then open http://127.0.0.1:8000/)")
    return results
