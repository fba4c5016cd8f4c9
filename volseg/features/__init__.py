"""Per-location features: the training-free filter bank, or a learned MONAI backbone."""
from __future__ import annotations

from pathlib import Path

from ..units import parse_bytes
from .filterbank import FilterBank
from .stream import compute_features

# checkpoints that ship inside the package, by name (model card: volseg/models/README.md)
PACKAGED_MODELS = {"learned2d": Path(__file__).resolve().parents[1] / "models" / "learned2d.ckpt"}


def get_extractor(spec="filterbank", device: str = "cpu"):
    """'filterbank', a packaged model's name ('learned2d'), a FeatureExtractor object, a path to a
    learned-backbone checkpoint (.ckpt), or several of these joined by '+' (``learned2d+filterbank``:
    a product kernel over both, :mod:`volseg.features.stack`)."""
    if not isinstance(spec, (str, Path)):
        return spec
    if isinstance(spec, str) and "+" in spec and not Path(spec).exists():
        from .stack import StackedFeatures

        return StackedFeatures([get_extractor(part.strip(), device) for part in spec.split("+")])
    if spec == "filterbank":
        return FilterBank()
    from .backbones import load_backbone  # torch/monai networks only when asked for

    return load_backbone(PACKAGED_MODELS.get(str(spec), spec), device=device)


__all__ = ["FilterBank", "compute_features", "get_extractor", "parse_bytes"]
