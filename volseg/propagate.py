"""One whole video job: video + clicks and/or masks on some frames -> a mask for every frame, with provenance.

The counterpart of :mod:`volseg.segment` for videos.  Every input is read and checked before any
work (clicks within the frames, mask frames within the video, no existing masks in the output
folder without ``overwrite``); then the annotated frames are propagated (:class:`volseg.video.VideoSegmenter`)
and each frame's palette PNG is written atomically, the overlay video if asked, and the sidecar
``propagate.json`` last: a folder with that sidecar holds a finished job.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .clicks import load_clicks, validate_clicks
from .errors import InputError
from .io import read_mask
from .io.video import MaskWriter, OverlayWriter, open_video
from .provenance import file_sha256, versions, write_sidecar
from .video import VideoConfig, VideoSegmenter


@dataclass(frozen=True)
class Propagated:
    record: dict              # the provenance record, as written to out/propagate.json
    overlay_kind: str | None  # how the overlay video was written (its container and codec), if one was asked


def propagate_video(video: str | Path, out: str | Path, *, clicks: str | Path | None = None,
                    masks: Sequence[tuple[int, str | Path]] = (), overlay: str | Path | None = None,
                    config: VideoConfig | dict | None = None, overwrite: bool = False) -> Propagated:
    """Mask every frame of ``video`` into the folder ``out`` from a clicks file (each click with its frame)
    and/or ``masks`` ((frame, label-map path) pairs)."""
    config = config if isinstance(config, VideoConfig) else VideoConfig.from_dict(config)
    masks = [(int(t), Path(p)) for t, p in masks]
    if not clicks and not masks:
        raise InputError("nothing to propagate: give --clicks and/or --mask FRAME=PATH")
    src = open_video(video)
    T = len(src)
    click_list = load_clicks(clicks) if clicks else []
    validate_clicks(click_list, src.shape, frames=T)
    for t, p in masks:
        if not 0 <= t < T:
            raise InputError(f"--mask for frame {t}: the video has {T} frames")
    t0 = time.perf_counter()
    with VideoSegmenter(src, config) as seg:
        # every input is read and checked (a mask by the annotation it becomes) before any output is made,
        # and every output before the clicked frames' masks are computed
        for t, p in masks:
            seg.set_mask(t, read_mask(p), propagate=False)
        writer = MaskWriter(out, src, overwrite=overwrite)
        writer.check()
        over = OverlayWriter(overlay, src.shape, src.fps, overwrite=overwrite) if overlay else None
        seg.add_clicks(click_list, propagate=False)
        for t, labels in seg.label_maps(range(T), propagate=sorted(seg.annotations)):
            writer.write(t, labels)
            if over is not None:
                over.write(src[t], labels)
        t_prop = seg.stats["seconds"]
        stats = dict(seg.stats)
        annotated = sorted(seg.annotations)
        objects = list(seg.objects)
    overlay_path = over.close() if over is not None else None
    seconds = time.perf_counter() - t0
    record = {
        "command": "propagate", "video": str(video), "video_sha256": file_sha256(video),
        "frames": T, "size": list(src.shape), "objects": objects, "annotated_frames": annotated,
        "clicks": [c.to_dict() for c in click_list], "masks": {str(t): str(p) for t, p in masks},
        "config": config.to_dict(), "seconds": seconds, "propagation_seconds": t_prop, "fps": T / seconds,
        "memory": stats, "overlay": str(overlay_path) if overlay_path else None, "versions": versions(),
    }
    write_sidecar(Path(out) / "propagate.png", record)
    return Propagated(record, over.kind if over is not None else None)
