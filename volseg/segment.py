"""One whole job: image file + clicks file -> mask (and maps) in the image's geometry, with provenance.

Everything is computed before anything is written, every output is checked first (never over an
input, never over an existing file without ``overwrite``) and each file is written atomically, so a
failure leaves no partial output behind.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import __version__
from .clicks import load_clicks
from .config import GPConfig
from .errors import ClickError
from .io import read_image, read_mask, write_mask, write_probability
from .io.atomic import check_output
from .provenance import file_sha256, versions, write_sidecar, sidecar_path
from .session import Session


def segment_file(image: str | Path, clicks: str | Path, out: str | Path, *, prob: str | Path | None = None,
                 uncertainty: str | Path | None = None, prior: str | Path | None = None, device: str = "cpu",
                 overwrite: bool = False, features: str = "filterbank", config: GPConfig | dict | None = None,
                 **settings) -> dict:
    """Segment ``image`` from ``clicks``; write the mask to ``out`` (+ optional maps); return the provenance record."""
    inputs = tuple(p for p in (image, clicks, prior) if p is not None)
    outputs = [Path(p) for p in (out, prob, uncertainty) if p is not None]
    if Path(out).exists():  # a sidecar without its mask is the leftover of an interrupted run: replace it
        outputs.append(sidecar_path(out))
    if len({o.resolve() for o in outputs}) != len(outputs):
        raise ClickError("output paths must differ from each other")  # e.g. --prob equal to --out
    for o in outputs:
        check_output(o, overwrite=overwrite, inputs=inputs)

    img = read_image(image)
    click_list = load_clicks(clicks, img)
    if not click_list:
        raise ClickError(f"clicks file {clicks} contains no clicks")
    prior_mask = read_mask(prior, like=img) if prior is not None else None

    session = Session(features=features, device=device, config=config, **settings)
    session.set_image(img, prior=prior_mask)
    for c in click_list:
        session.add_click(c.position, c.positive, c.object)
    mask = session.mask()
    prob_map = session.probability(session.objects[0]) if prob is not None and session.objects else None
    if prob is not None and prob_map is None:
        prob_map = np.zeros(img.shape, dtype=np.float32)
    unc_map = session.uncertainty() if uncertainty is not None else None

    # the mask is renamed into place last: its presence (with a matching sidecar) marks a finished job
    written = {"mask": str(out)}
    if prob is not None:
        written["probability"] = str(write_probability(prob_map, img, prob, overwrite=overwrite))
    if uncertainty is not None:
        written["uncertainty"] = str(write_probability(unc_map, img, uncertainty, overwrite=overwrite))

    record = {
        "volseg": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "input": str(image),
        "input_sha256": file_sha256(image),
        "clicks_file": str(clicks),
        "clicks_sha256": file_sha256(clicks),
        "prior": None if prior is None else str(prior),
        "prior_sha256": None if prior is None else file_sha256(prior),
        "clicks": [c.to_dict() for c in click_list],
        "parameters": {"features": str(features), "device": device, **session.config.to_dict(),
                       "spatial_lengthscale_used": session.spatial_lengthscale},
        "geometry": {"shape": list(img.shape), "spacing": list(img.spacing), "origin": list(img.origin),
                     "direction": np.asarray(img.direction).tolist()},
        "objects": session.objects,
        "voxels_per_label": {int(v): int(n) for v, n in zip(*np.unique(mask, return_counts=True))},
        "feature_seconds": session.feature_seconds,
        "click_seconds": session.timings,
        "outputs": written,
        "versions": versions(),
    }
    write_sidecar(out, record, inputs=inputs)
    write_mask(mask, img, out, overwrite=overwrite)
    return record
