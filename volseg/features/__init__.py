"""Per-location features: the training-free filter bank, a learned MONAI backbone, or a stack of them.

Each is a :class:`FeatureExtractor` (:mod:`.base`); :func:`get_extractor` makes one from its name.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from .backbones import BackboneExtractor, load_backbone
from .base import FeatureExtractor, feature_budget
from .filterbank import FilterBank
from .stack import StackedFeatures
from .stream import compute_features

# checkpoints that ship inside the package, by name (model card: volseg/models/README.md)
PACKAGED_MODELS = {"learned2d": Path(__file__).resolve().parents[1] / "models" / "learned2d.ckpt"}


def feature_names(spec) -> list[str]:
    """The parts of a features setting joined by '+' (``"learned2d+filterbank"`` -> ``["learned2d",
    "filterbank"]``); a path that exists is one part even where its name holds a '+'."""
    spec = str(spec).strip()
    return [spec] if "+" not in spec or Path(spec).exists() else [part.strip() for part in spec.split("+")]


def get_extractor(spec="filterbank", device: str = "cpu") -> FeatureExtractor:
    """'filterbank', a packaged model's name ('learned2d'), a FeatureExtractor object, a path to a
    learned-backbone checkpoint (.ckpt), or several of these joined by '+' (``learned2d+filterbank``:
    a product kernel over both, :mod:`volseg.features.stack`)."""
    if not isinstance(spec, (str, Path)):
        if not isinstance(spec, FeatureExtractor):
            raise InputError(f"{type(spec).__name__} is not a FeatureExtractor: it needs name, gp_config, "
                             "prescaled, features(image, budget) and prior_mean(image)")
        return spec
    parts = feature_names(spec) if isinstance(spec, str) else [spec]
    if len(parts) > 1:
        return StackedFeatures([get_extractor(part, device) for part in parts])
    if spec == "filterbank":
        return FilterBank()
    return load_backbone(PACKAGED_MODELS.get(str(spec), spec), device=device)


__all__ = ["BackboneExtractor", "FeatureExtractor", "FilterBank", "PACKAGED_MODELS", "StackedFeatures",
           "compute_features", "feature_budget", "feature_names", "get_extractor"]
