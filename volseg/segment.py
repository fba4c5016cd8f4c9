"""One whole job: image file + clicks file -> mask (and maps) in the image's geometry, with provenance.

Before anything is computed, every output path is checked (format, folder, never over or into an
input, never over an existing file without ``overwrite``: the sidecar and a .mhd's data file
included) and claimed, so that no other volseg run writes it at the same time.  Every file is then
written to a temporary file and committed together: the sidecar, which records each output's
SHA-256, first and the mask last.  A crash at any point leaves either the old result, or a mask
that does not match its sidecar (which ``volseg batch`` recomputes), plus temporary files that the
next run in the folder removes.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from . import __version__
from .clicks import load_clicks, made_one_at_a_time
from .config import GPConfig
from .errors import ClickError
from .io import check_output_dims, check_output_path, output_files, read_image, read_mask, write_mask, write_probability
from .io.atomic import check_output, staging
from .io.claim import claim
from .provenance import file_sha256, interrupted_outputs, sidecar_path, versions, write_sidecar
from .session import Session


def segment_file(image: str | Path, clicks: str | Path, out: str | Path, *, prob: str | Path | None = None,
                 uncertainty: str | Path | None = None, prior: str | Path | None = None, device: str = "cpu",
                 overwrite: bool = False, features: str = "filterbank", config: GPConfig | dict | None = None,
                 **settings) -> dict:
    """Segment ``image`` from ``clicks``; write the mask to ``out`` (+ optional maps); return the provenance record."""
    inputs = tuple(p for p in (image, clicks, prior) if p is not None)
    named = {"mask": out, "probability map": prob, "uncertainty map": uncertainty}
    named = {what: check_output_path(p, what) for what, p in named.items() if p is not None}
    sidecar = sidecar_path(out)
    files = [f for p in named.values() for f in output_files(p)] + [sidecar]
    if len({f.resolve() for f in files}) != len(files):
        raise ClickError("output paths must differ from each other (and from the mask's sidecar "
                         f"{sidecar.name}{' and data file' if len(output_files(out)) > 1 else ''})")
    with claim([*named.values(), sidecar]):
        # checked once the claim is held, so that a run finishing meanwhile is seen
        leftovers = interrupted_outputs(out)
        for f in files:
            check_output(f, overwrite=overwrite or f.resolve() in leftovers, inputs=inputs)
        return _segment(image, clicks, named, inputs, prior=prior, device=device, features=features,
                        config=config, **settings)


def _segment(image, clicks, named: dict, inputs: tuple, *, prior, device, features, config, **settings) -> dict:
    out, prob, uncertainty = (named.get(k) for k in ("mask", "probability map", "uncertainty map"))
    img = read_image(image)
    for what, p in named.items():
        check_output_dims(p, img.ndim, what)
    click_list = load_clicks(clicks, img)
    if not click_list:
        raise ClickError(f"clicks file {clicks} contains no clicks")
    prior_mask = read_mask(prior, like=img) if prior is not None else None

    session = Session(features=features, device=device, config=config, **settings)
    session.set_image(img, prior=prior_mask)
    if made_one_at_a_time(clicks):  # as a viewer made them: in order, each one's labels held
        for c in click_list:
            session.add_click(c.position, c.positive, c.object)
    else:  # one step: the file's click order does not change the mask
        session.add_clicks(click_list)
    mask = session.mask()
    prob_map = session.probability(session.objects[0]) if prob is not None and session.objects else None
    if prob is not None and prob_map is None:
        prob_map = np.zeros(img.shape, dtype=np.float32)
    unc_map = session.uncertainty() if uncertainty is not None else None

    with staging() as stage:
        written = {"mask": str(out)}
        if prob is not None:
            written["probability"] = str(write_probability(prob_map, img, prob, overwrite=True))
        if uncertainty is not None:
            written["uncertainty"] = str(write_probability(unc_map, img, uncertainty, overwrite=True))
        write_mask(mask, img, out, overwrite=True)
        # the sidecar names each output's content, so a mask that is not the one it describes is seen
        checksums = {str(final): file_sha256(tmp) for p in named.values() for tmp, final in stage.files(p)}
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
            "outputs_sha256": checksums,
            "versions": versions(),
        }
        write_sidecar(out, record, inputs=inputs)
        # the sidecar first, the mask last: a mask beside a sidecar that records it marks a finished job
        stage.commit([sidecar_path(out), *(p for p in (prob, uncertainty) if p is not None), out])
    return record
