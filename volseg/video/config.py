"""Video propagation settings: one dataclass, from a YAML file's ``video:`` section and KEY=VALUE options."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..config import read_section, whole_number
from ..errors import InputError
from ..features import PACKAGED_MODELS, feature_names


@dataclass(frozen=True)
class VideoConfig:
    scale: float = 4.0                 # working grid = frame / scale per axis ...
    min_side: int = 96                 # ... but its short side stays at least this (or the frame's)
    budget: int = 3200                 # memory bank points (global + local)
    expert_points: int = 750           # >0: a memory larger than this is split by appearance into groups of at most
                                       # this many points, one exact GP each (volseg.video.gp.LocalExperts); 0: one
                                       # GP on the whole memory (configs/video_small_memory.yaml: 800 points)
    global_fraction: float = 0.5       # share of the budget for the annotated frames
    window: int = 2                    # local memory: the last `window` propagated frames that joined it
    memory_every: int = 3              # a propagated frame joins the memory every this many frames (XMem's
                                       # mem_every); between, the memory and so the GP's fit stay as they are
    label_share: float = 0.3           # each label's (background's, every object's) least share of the points a
                                       # frame gives the memory (before normalising); by area alone an object
                                       # gets few, and appearance it shares with the background is voted
                                       # background, frame after frame: the mask shrinks
    feature_lengthscale: float = 0.35  # times sqrt(number of features)
    spatial_lengthscale: float = 6.0   # working-grid pixels: the spatial kernel's window (if global_weight < 1)
    global_weight: float = 1.0         # weight of appearance-only matching in the kernel (1: no spatial term)
    noise_click: float = 1e-3
    noise_annotated: float = 0.05      # mask samples of annotated frames
    noise_growth: float = 0.01         # extra noise per frame of distance from the annotated frame
    noise_max: float = 1.0
    prior_strength: float = 0.5        # |m0| of the previous frame's mask
    prior_blur: float = 1.0            # working-grid pixels
    flow: str = "ultrafast"            # DIS preset (ultrafast | fast | medium) or "none"
    refine_radius: float = 2.0         # guided-filter radius in working-grid pixels; 0: bilinear only
    refine_eps: float = 1e-3
    edge_strength: float = 15.0        # >0: each mask is moved onto the frame's edges by the 2D session's minimum
                                       # cut at full resolution (volseg.boundary; 0: the guided filter alone)
    edge_reach: float = 20.0           # ... within this many frame pixels of the mask's boundary
    edge_step: int = 1                 # ... on the frame shrunk this many times (1: full resolution)
    edge_connectivity: int = 1         # ... its graph's pairs: 1 the 4-neighbourhood, 2 the 8-neighbourhood (the 2D
                                       # session's; in video it costs speed for no gain: benchmarks/README.md)
    smoothing_scales: tuple = (0.0, 1.0, 2.0, 4.0, 8.0)  # filter bank on the working grid
    gradient_scales: tuple = (1.0, 3.0)
    hessian_scales: tuple = (2.0,)
    roi_margin: int = 10               # pixels of the `scale` grid around the prior's support where the GP
                                       # is evaluated; -1: everywhere
    roi_level: float = 0.05            # the prior's support: where the warped probability exceeds this. The
                                       # posterior far from every memory point is Phi(m0), never near 0, so below
                                       # 0.5 the support soon covers the frame (appearance may find the object
                                       # anywhere); 0.5: the warped mask only (faster, a region that follows it)
    object_cells: int = 2500           # >0: the grid is finer (down to full resolution) so the smallest annotated
                                       # object covers about this many cells; 0: always `scale`
    flow_check: bool = False           # forward-backward flow consistency: the prior mean fades where the flow fails
    lost_fraction: float = 0.1         # an object whose warped mask has less than this fraction of its annotated area
                                       # is lost: searched for in the whole frame from the annotated frames' memory
                                       # (0: never; the frames it counts as lost are in VideoSegmenter.stats["lost"])
    fine_band: float = 0.4             # on a grid finer than `scale`: exact GP only where |latent| < this;
                                       # 0: everywhere.  Below prior_strength, because far from every memory
                                       # point the latent is the background's m0 = -prior_strength: a wider
                                       # band is refined everywhere
    noise_propagated: float = 0.05     # noise of propagated frames' samples at distance 0 (annotated: noise_annotated)
    prior_mode: str = "linear"         # m0 = s (2p - 1) ("linear") or s Phi^-1(p) ("probit")
    components: bool = True            # drop object parts not touching the previous frame's mask
    detached_gap: float = 0.0          # >0: ... except a part within this many times the object's annotated size
                                       # (sqrt of its area, in cells) of that mask that moves with the object: a
                                       # part coming out from behind a thin occluder (why it is off:
                                       # benchmarks/README.md, "A part coming out from behind an occluder")
    targets: str = "label"             # "label": GP on +-1 labels, latent = m0 + GP; "residual": GP on y - m0
    threads: int = 1                   # BLAS / OpenCV threads while propagating (0: library default); see threads.py
    label_threads: int = 1             # threads making full-resolution label maps while the propagation runs in
                                       # its own (VideoSegmenter.label_maps); 0: one after the other, in the caller's
    seed: int = 0
    features: str = "filterbank"       # per-frame features: filterbank, learned2d, a .ckpt path, or several joined
                                       # by + (learned2d+filterbank: embedding and filter bank side by side)
    session_features: str = "filterbank"  # features of the 2D session that makes a clicked frame's mask (as
                                       # `features`; learned2d+filterbank corrects better, README, but its weights
                                       # carry research-only terms, so the training-free bank stays the default)
    session_zoom: bool = False         # True: the clicked frame's session works on a box around the objects,
                                       # enlarged (volseg.video.frame_session; RITM's zoom-in): interactive tune
                                       # gains at 3 and 8 rounds, held-out loses at 3 (README), so off
    session_soft_prior: bool = True    # a propagated frame's session starts from the propagation's probability (its
                                       # prior mean follows how sure the propagation was), not from its labels: a
                                       # click then clears an unsure flood (interactive gains on both groups, README);
                                       # one object only (more keep their labels)
    session_motion: bool = True        # the clicked frame's session also sees the frame's motion against its
                                       # surroundings (volseg.video.motion): a click spreads over what moves
                                       # with it (interactive gains on both groups, README)
    learned_long_side: int = 320       # a learned extractor gets the frame shrunk to this long side (never below the
                                       # working grid's; 0: full resolution): its network resizes to its own input
                                       # size anyway, and upsampling the embedding to the full frame costs more
    learned_zoom: bool = False         # a learned network runs enlarged as much as a small object's finer grid is
                                       # (benchmarks/README.md: small objects gain, the tune group loses, so off)

    def __post_init__(self) -> None:
        for f in fields(self):  # whole numbers (800.0 from a script) are stored as int; 2.5 frames is an error
            if f.type == "int":
                value = whole_number(getattr(self, f.name))
                if value is None:
                    raise InputError(f"video settings: {f.name} must be a whole number, got {getattr(self, f.name)!r}")
                object.__setattr__(self, f.name, value)
            if f.type == "bool" and not isinstance(getattr(self, f.name), bool):  # "no" in a script is truthy
                raise InputError(f"video settings: {f.name} must be true or false, got {getattr(self, f.name)!r}")
        checks = [
            (self.scale >= 1, "scale must be 1 or more"), (self.budget >= 8, "budget must be 8 points or more"),
            (0 < self.global_fraction < 1, "global_fraction must be between 0 and 1"),
            (self.window >= 1, "window must be 1 or more"),
            (self.memory_every >= 1, "memory_every must be 1 or more"),
            (self.expert_points >= 0, "expert_points must be 0 or more"),
            (0 <= self.label_share <= 1, "label_share must be in [0, 1]"),
            (0 <= self.global_weight <= 1, "global_weight must be in [0, 1]"),
            (self.feature_lengthscale > 0 and self.spatial_lengthscale > 0, "lengthscales must be positive"),
            (min(self.noise_click, self.noise_annotated, self.noise_propagated) > 0 and self.noise_growth >= 0,
             "noise levels must be positive"),
            (self.object_cells >= 0, "object_cells must be 0 or more"),
            (self.label_threads >= 0, "label_threads must be 0 or more"),
            (self.edge_strength >= 0 and self.edge_reach > 0 and self.edge_step >= 1,
             "edge_strength must be 0 or more, edge_reach positive, edge_step 1 or more"),
            (self.edge_connectivity in (1, 2), "edge_connectivity must be 1 or 2"),
            (self.learned_long_side >= 0, "learned_long_side must be 0 or more"),
            (0 <= self.lost_fraction < 1, "lost_fraction must be in [0, 1)"),
            (self.detached_gap >= 0, "detached_gap must be 0 or more"),
            (0 < self.roi_level < 1, "roi_level must be in (0, 1)"),
            (self.flow in ("ultrafast", "fast", "medium", "none"), "flow must be ultrafast, fast, medium or none"),
            (self.prior_mode in ("linear", "probit"), "prior_mode must be linear or probit"),
            (self.targets in ("label", "residual"), "targets must be label or residual"),
        ]
        bad = [msg for ok, msg in checks if not ok] + feature_problems(self.features) \
            + feature_problems(self.session_features, "session_features")
        if bad:
            raise InputError("video settings: " + "; ".join(bad))

    @classmethod
    def from_dict(cls, data: dict | None) -> "VideoConfig":
        data = dict(data or {})
        names = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise InputError(f"unknown video setting(s) {unknown}; known: {sorted(names)}")
        for k in ("smoothing_scales", "gradient_scales", "hessian_scales"):
            if k in data and not isinstance(data[k], tuple):
                data[k] = tuple(float(v) for v in (data[k] if isinstance(data[k], (list, tuple)) else [data[k]]))
        return cls(**data)

    def replace(self, **changes) -> "VideoConfig":
        return VideoConfig.from_dict({**asdict(self), **changes})

    def to_dict(self) -> dict:
        return asdict(self)


def feature_problems(spec, name: str = "features") -> list[str]:
    """What is wrong with a features setting (``name``), checked by name only (a checkpoint is read when the
    video segmenter starts): every part is filterbank, a packaged model or an existing checkpoint file, once."""
    if not isinstance(spec, str) or not spec.strip():
        return [f"{name} must be a name such as filterbank or learned2d+filterbank, not {spec!r}"]
    parts = feature_names(spec)
    unknown = [p for p in parts if p != "filterbank" and p not in PACKAGED_MODELS and not Path(p).is_file()]
    if unknown:
        known = ", ".join(["filterbank", *sorted(PACKAGED_MODELS)])
        return [f"{name} {spec!r}: unknown extractor(s) {', '.join(map(repr, unknown))}; use {known}, "
                "a checkpoint .ckpt path, or several joined by +"]
    if len(set(parts)) < len(parts):
        return [f"{name} {spec!r} names an extractor twice"]
    return []


def option_value(text: str):
    """The value of a KEY=VALUE option: a bool, an int, a float, a tuple (comma-separated) or the text."""
    low = text.strip().lower()
    if low in ("true", "yes", "on", "false", "no", "off"):
        return low in ("true", "yes", "on")
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if "," in text:
        return tuple(option_value(t) for t in text.split(",") if t.strip())
    return text


def read_video_config(config_path: str | None, options: list[str]) -> VideoConfig:
    """The settings of a YAML file's ``video:`` section (or the whole file), overridden by KEY=VALUE ``options``."""
    data: dict = {}
    if config_path:
        data.update(read_section(config_path, "video"))
    for item in options:
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise InputError(f"--option {item!r}: expected KEY=VALUE")
        data[key.strip()] = option_value(val)
    return VideoConfig.from_dict(data)
