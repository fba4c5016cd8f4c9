"""GP and session settings: one dataclass, readable from YAML (configs/default.yaml mirrors it)."""
from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import ClassVar

import yaml

from .errors import InputError
from .gp.kernels import KERNELS
from .units import parse_bytes

# The defaults that depend on the image, as (2D images, volumes): a setting left None in GPConfig takes
# its value from here, through the *_for(ndim) methods; configs/default.yaml only mirrors this table
# (tests/test_config.py checks that they agree).  Why each value, in the *_for methods.
BY_DIMENSION = {
    "kernel": ("multiscale", "multiscale"),
    "spatial_fraction": (0.14, 0.07),          # with the multiscale kernel
    "spatial_fraction_one_scale": (0.1, 0.05),  # with any other kernel
    "noise_per_point": (False, True),
    "edge_strength": (15.0, 0.0),
    "latent": ("gp", "sum"),
}

# what carries a click's label over the image (GPConfig.latent): the GP alone, or the GP and a Gaussian Markov
# random field on supervoxels (volseg.gp.gmrf) as one latent, their sum (its kernel the sum of theirs): the
# GMRF carries a label across its supervoxels, the GP corrects inside them.  (The GMRF alone and the GMRF's
# posterior mean as the GP's prior mean lost to the sum on the dev volumes: benchmarks/README.md)
LATENTS = ("gp", "sum")


def by_dimension(name: str, ndim: int):
    """The default of setting ``name`` (a key of BY_DIMENSION) for an image of ``ndim`` spatial axes."""
    return BY_DIMENSION[name][0 if ndim == 2 else 1]


@dataclass(frozen=True)
class GPConfig:
    kernel: str | None = None             # rbf | multiscale | matern12 | matern32 | matern52; None: BY_DIMENSION
    short_ratio: float = 4.0              # multiscale: the short spatial GP's lengthscale is this many times shorter
    short_share: float | None = None      # ... and has this share of the prior variance; None: short_share_for
    outputscale: float = 1.0              # prior variance of the latent f
    noise: float = 0.1                    # s2; lowered automatically if a click would lose its label
    noise_per_point: bool | None = None   # lower the noise only at a click that would lose its label (else at all);
                                          # None: BY_DIMENSION
    feature_lengthscale: float = 1.0      # times sqrt(number of features): features are standardised
    spatial_lengthscale: float | None = None  # mm (pixels for rasters); None: spatial_fraction of the diagonal
    spatial_fraction: float | None = None  # of the image diagonal; None: BY_DIMENSION (by kernel too)
    background_mean: float = -0.5         # prior mean without a prior mask: unclicked regions lean background
    prior_strength: float = 1.0           # prior mean is +-this inside/outside a prior mask
    connected: bool = True                # mask keeps only regions connected to a positive click of their object
    fill_holes: bool = True               # and fills enclosed holes that hold no negative click
    hysteresis: float = 0.0               # after a click, a location keeps its label unless another label's
                                          # probability beats it by more than this (volseg.mask.HeldLabels);
                                          # 0: off (volumes: configs/held_labels.yaml, README)
    edge_strength: float | None = None    # minimum cut onto image edges (volseg.boundary); 0 disables;
                                          # None: BY_DIMENSION
    edge_band: float = 1.5                # ... over locations whose latent mean is within this of 0
    edge_reach: float = 35.0              # ... and within this many mm (pixels) of the GP's boundary; wide enough
                                          # to undo a flood of look-alike background
    edge_max_locations: int = 4_000_000   # ... on images up to this size (a whole CT keeps the GP's own mask)
    appearance_weight: float = 0.5        # ... plus this times a colour model's log-likelihood ratio (GrabCut-like)
    edge_connectivity: int = 2            # ... between face and diagonal neighbours (1: faces only; up to ndim)
    seed_points: int = 0                  # a positive click lends its label to this many points of the region around
                                          # it that looks like it (volseg.seeds); 0: off (on the dev volumes the
                                          # region leaked into neighbouring tissue, README)
    seed_radius: float = 3.0              # ... within this many spatial lengthscales of the click
    seed_similarity: float = 0.6          # ... whose feature kernel to the click is at least this
    seed_spacing: float = 0.5             # ... spaced at least this many spatial lengthscales apart
    seed_noise: float = 0.5               # ... as weak labels with this much extra noise (clicks override them)
    latent: str | None = None             # gp | sum (LATENTS); None: BY_DIMENSION
    gmrf_nodes: int = 15000               # sum: about this many supervoxels (the sparse factor grows with them)
    gmrf_range: float = 0.5               # ... prior range, as a fraction of the image diagonal, where no edge stops it
    gmrf_contrast: float = 0.1            # ... an edge between supervoxels whose intensity step is this many times the
                                          # typical one (squared) conducts e^-1 of a step inside tissue
    gmrf_share: float = 0.5               # sum: the GMRF's prior variance, as a multiple of the outputscale
    gmrf_anchor_share: float = 0.0        # sum: the share near each object's first positive click, blended in by
                                          # the GMRF's correlation with it (a first click fills a large organ and
                                          # floods small ones, README); 0: off
    gmrf_appearance: float = 16.0         # sum: the GMRF's correlation times an RBF on the supervoxels' mean
                                          # intensities, its squared lengthscale this many typical steps; 0: off
    tolerance: float = 1e-5               # a click may leave mean and variance this far off outside its reach
    on_demand_features_above: int = 30_000_000  # volumes over this many voxels compute features where clicks
                                          # reach, standardised from a sample; smaller ones all at once, exactly
    memory_budget: str = "4GB"
    chunk_bytes: str = "256MB"
    # the settings a YAML file or dict names (from_dict, from_yaml; replace adds its changes), even at their
    # default value: they win over a learned model's GP settings as a keyword setting does
    named: ClassVar[frozenset] = frozenset()

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            _check_setting(f.name, value)
            if _RULES[f.name][0] == "integer" and value is not None:  # 4.0 from YAML, numpy from a script
                object.__setattr__(self, f.name, whole_number(value))

    @classmethod
    def from_dict(cls, data: dict | None) -> "GPConfig":
        data = dict(data or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"unknown GP setting(s) {unknown}; known: {sorted(names)}")
        config = cls(**data)
        object.__setattr__(config, "named", frozenset(data))
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> "GPConfig":
        section = read_section(path, "gp")
        try:
            return cls.from_dict(section)
        except InputError as e:
            raise InputError(f"config file {path}: {e}") from None

    def kernel_for(self, ndim: int) -> str:
        # the multiscale kernel everywhere: late clicks stay local (measured on Berkeley and on the dev volumes'
        # tune part, README), and its mean, what a click's mask reads, runs in the fused pass
        return self.kernel if self.kernel is not None else by_dimension("kernel", ndim)

    def spatial_fraction_for(self, ndim: int) -> float:
        # tuned on Berkeley (2D photos, objects ~17% of the image) and on the dev volumes' tune part (objects
        # fill less of a volume); the multiscale kernel's long part is longer, as it carries only part of the variance
        if self.spatial_fraction is not None:
            return self.spatial_fraction
        multiscale = self.kernel_for(ndim) == "multiscale"
        return by_dimension("spatial_fraction" if multiscale else "spatial_fraction_one_scale", ndim)

    def noise_per_point_for(self, ndim: int) -> bool:
        # the global lowering made correcting clicks on the dev volumes add false foreground far away
        return self.noise_per_point if self.noise_per_point is not None else by_dimension("noise_per_point", ndim)

    def edge_strength_for(self, ndim: int) -> float:
        # tuned on Berkeley (its NoC@90, README); on the dev MR/CT volumes the cut shaved thin,
        # low-contrast structures and Dice fell as clicks were added, so volumes go without
        return self.edge_strength if self.edge_strength is not None else by_dimension("edge_strength", ndim)

    def latent_for(self, ndim: int, voxels: int = 0) -> str:
        # volumes: the GMRF + GP sum fills more of a clicked organ on the dev volumes (README); a whole CT
        # over on_demand_features_above keeps the GP, as the supervoxel graph needs the whole volume before
        # the first click
        if self.latent is not None:
            return self.latent
        if ndim != 2 and voxels > self.on_demand_features_above:
            return "gp"
        return by_dimension("latent", ndim)

    def short_share_for(self, latent: str) -> float:
        # the sum's GMRF carries a click far, so its stationary part leans to the short scale (chosen on the
        # dev volumes' tune part with the sum); the GP alone keeps the split tuned on Berkeley and the volumes
        if self.short_share is not None:
            return self.short_share
        return 0.8 if latent == "sum" else 0.3

    def replace(self, **changes) -> "GPConfig":
        changes = {k: v for k, v in changes.items() if v is not None}
        config = GPConfig.from_dict({**asdict(self), **changes})  # unknown names: an InputError naming them
        object.__setattr__(config, "named", self.named | frozenset(changes))
        return config

    def to_dict(self) -> dict:
        return asdict(self)


# the type and range of every setting: (kind, lowest, lowest allowed itself, highest, None allowed),
# written once per kind of range and spread over the settings that share it
_RANGES = {
    ("number", 0.0, False, None, False): ("short_ratio", "outputscale", "noise", "feature_lengthscale", "seed_radius",
                                          "seed_spacing", "tolerance", "gmrf_range", "gmrf_contrast",
                                          "gmrf_share"),
    ("number", 0.0, False, None, True): ("spatial_lengthscale", "spatial_fraction"),
    ("number", 0.0, True, None, False): ("prior_strength", "edge_band", "edge_reach", "appearance_weight",
                                         "seed_noise", "gmrf_appearance", "gmrf_anchor_share"),
    ("number", 0.0, True, None, True): ("edge_strength",),
    ("number", 0.0, True, 1.0, False): ("seed_similarity",),
    ("number", 0.0, True, 1.0, True): ("short_share",),
    ("number", 0.0, True, 0.5, False): ("hysteresis",),
    ("number", None, True, None, False): ("background_mean",),
    ("integer", 0, True, None, False): ("edge_max_locations", "seed_points", "on_demand_features_above"),
    ("integer", 2, True, None, False): ("gmrf_nodes",),
    ("integer", 1, True, 3, False): ("edge_connectivity",),
    ("bool", None, True, None, False): ("connected", "fill_holes"),
    ("bool", None, True, None, True): ("noise_per_point",),
    ("kernel", None, True, None, True): ("kernel",),
    ("latent", None, True, None, True): ("latent",),
    ("size", None, True, None, False): ("memory_budget", "chunk_bytes"),
}
_RULES = {name: rule for rule, names in _RANGES.items() for name in names}


# the sections a settings file may hold: one per kind of settings (GPConfig, volseg.video.VideoConfig)
SECTIONS = ("gp", "video")


def read_section(path: str | Path, name: str) -> dict:
    """The ``name:`` section (one of SECTIONS) of a YAML settings file; a file with no such section is all
    ``name`` settings, less the other sections.  An InputError says what is wrong with the file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(f"config file {p} is not valid YAML: {' '.join(str(e).split())}") from None
    if isinstance(data, dict):
        data = data[name] if name in data else {k: v for k, v in data.items() if k not in SECTIONS}
    if not isinstance(data, dict):
        what = "GP" if name == "gp" else name
        raise InputError(f"config file {p}: expected a mapping of {what} settings (key: value), "
                         f"got {type(data).__name__}")
    return data


def whole_number(value) -> int | None:
    """``value`` as an int if it is a whole real number (4, 4.0, a numpy integer), else None (2.5, nan, True)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        return None
    return int(value) if value == int(value) else None


def _check_setting(name: str, value) -> None:
    """An InputError naming the setting unless ``value`` has its type and lies in its range."""
    kind, low, low_ok, high, none_ok = _RULES[name]
    if value is None:
        if not none_ok:
            raise InputError(f"GP setting {name} needs a value, got null")
        return
    if kind == "kernel":
        if not isinstance(value, str) or value.lower() not in KERNELS:
            raise InputError(f"unknown kernel {value!r} (GP setting kernel): {', '.join(KERNELS)} or null")
        return
    if kind == "latent":
        if value not in LATENTS:
            raise InputError(f"unknown latent {value!r} (GP setting latent): {', '.join(LATENTS)} or null")
        return
    if kind == "bool":
        if not isinstance(value, bool):
            raise InputError(f"GP setting {name} must be true or false, got {value!r}")
        return
    if kind == "size":
        parse_bytes(value, what=f"GP setting {name}")
        return
    number_ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not number_ok or (kind == "integer" and whole_number(value) is None):
        what = "a whole number" if kind == "integer" else "a finite number"
        raise InputError(f"GP setting {name} must be {what}, got {value!r}")
    if low is not None and (value < low or (value == low and not low_ok)):
        raise InputError(f"GP setting {name} must be {'at least' if low_ok else 'more than'} {low}, got {value!r}")
    if high is not None and value > high:
        raise InputError(f"GP setting {name} must be at most {high}, got {value!r}")
