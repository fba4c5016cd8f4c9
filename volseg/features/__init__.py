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
    parts = feature_parts(spec, device)
    return parts[0] if len(parts) == 1 else StackedFeatures(parts)


def feature_parts(spec, device: str = "cpu") -> list[FeatureExtractor]:
    """The extractors a features setting names, in order, each once, plus any a learned part was trained
    beside in one product kernel (its config's ``model.stack``): its learned GP settings hold only with them."""
    parts: list[FeatureExtractor] = []
    for name in feature_names(spec) if isinstance(spec, str) else [spec]:
        if name == "filterbank":
            parts.append(FilterBank())
            continue
        path_like = str(name).endswith(".ckpt") or any(sep in str(name) for sep in "/\\")
        if name not in PACKAGED_MODELS and not path_like and not Path(name).exists():  # a misspelt name
            raise InputError(f"unknown features {str(name)!r}: filterbank, {', '.join(PACKAGED_MODELS)}, a checkpoint "
                             "(.ckpt) path, or several joined by + (learned2d+filterbank)")
        learned = load_backbone(PACKAGED_MODELS.get(str(name), name), device=device)
        parts += [learned] + ([FilterBank()] if "filterbank" in learned.stack else [])
    names = [p.name for p in parts]
    return [p for i, p in enumerate(parts) if p.name not in names[:i]]


__all__ = ["BackboneExtractor", "FeatureExtractor", "FilterBank", "PACKAGED_MODELS", "StackedFeatures",
           "compute_features", "feature_budget", "feature_names", "feature_parts", "get_extractor"]
