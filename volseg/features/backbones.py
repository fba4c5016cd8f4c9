"""Learned features: a MONAI network maps an image to a D-dimensional embedding per pixel/voxel.

The network and its prior-mean head are trained end to end through the GP
(:mod:`volseg.train`); at inference they are a FeatureExtractor for :class:`volseg.Session`:

    ex = load_backbone("model.ckpt")
    feats = ex.features(image, budget=...)    # (*spatial, D) float32, standardised per image
    ex.gp_config                              # GPConfig fields the kernel was trained with
    ex.prior_mean(image)                      # (*spatial) latent prior mean for that image

2D: the image (RGB/255, grey replicated) is resized so its long side is the training
resolution, run once, and the embedding upsampled (bilinearly) to the image grid.  3D: the
volume is normalised per volume (0.5/99.5 percentiles) and run with MONAI sliding-window
inference at the training roi, so large volumes fit; the output stays at full resolution.

Checkpoint (``torch.save`` dict, format ``volseg-backbone/1``): ``config`` (the training YAML
as a dict; ``model`` says which network), ``state_dict``, ``prior_head``, ``gp_config``,
``manifest_sha256``, ``metrics`` (plus ``optimizer``/``step`` for resuming).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import InputError, MemoryBudgetError
from ..gp.differentiable import standardise
from ..image import Image
from ..io.atomic import atomic_path
from ..units import format_bytes
from .base import FeatureExtractor, feature_budget

FORMAT = "volseg-backbone/1"
SLICE_BATCH = 8  # slices per network pass when a 2D network runs on a volume

# networks by name; each builder gets (spatial_dims, in_channels, out_channels, **options)
NETWORKS_2D = ("BasicUNet", "FlexibleUNet", "SegResNet", "UNet")
NETWORKS_3D = ("UNet", "SegResNet", "SwinUNETR", "BasicUNet")


def build_network(model: dict) -> nn.Module:
    """A MONAI network from the ``model`` section of a config; out_channels = embed_dim."""
    from monai.networks import nets  # noqa: PLC0415 -- slow to import; only learned features need it

    m = dict(model)
    name = m.pop("name", "BasicUNet")
    dims = int(m.pop("spatial_dims", 2))
    in_ch = int(m.pop("in_channels", 3 if dims == 2 else 1))
    out = int(m.pop("embed_dim", 16))
    for key in ("long_side", "infer_long_side", "roi_size", "sw_batch_size", "overlap", "prior_hidden", "stack"):
        m.pop(key, None)
    allowed = NETWORKS_2D if dims == 2 else NETWORKS_3D
    if name not in allowed:
        raise InputError(f"model {name!r} is not supported for {dims}D; choose one of {', '.join(allowed)}")
    if name == "BasicUNet":
        return nets.BasicUNet(spatial_dims=dims, in_channels=in_ch, out_channels=out,
                              features=tuple(m.pop("features", (16, 16, 32, 64, 128, 16))), **m)
    if name == "FlexibleUNet":  # never pretrained: no weights are downloaded
        return nets.FlexibleUNet(in_channels=in_ch, out_channels=out, backbone=m.pop("backbone", "efficientnet-b0"),
                                 pretrained=False, spatial_dims=dims, **m)
    if name == "SegResNet":
        return nets.SegResNet(spatial_dims=dims, in_channels=in_ch, out_channels=out,
                              init_filters=int(m.pop("init_filters", 8)), **m)
    if name == "UNet":
        return nets.UNet(spatial_dims=dims, in_channels=in_ch, out_channels=out,
                         channels=tuple(m.pop("channels", (16, 32, 64))), strides=tuple(m.pop("strides", (2, 2))),
                         num_res_units=int(m.pop("num_res_units", 1)), **m)
    if name == "SwinUNETR":
        m.pop("img_size", None)  # MONAI >= 1.5 infers it; older versions are given the roi below
        return nets.SwinUNETR(in_channels=in_ch, out_channels=out, feature_size=int(m.pop("feature_size", 12)),
                              spatial_dims=dims, **m)
    raise InputError(f"unknown model {name!r}")


class PriorHead(nn.Module):
    """GPCIS prior mean: a per-location MLP (1x1 convolutions) from the embedding to the latent m0.
    Bounded by ``scale`` so the prior never outweighs a click (clicked labels are +-1)."""

    def __init__(self, embed_dim: int, spatial_dims: int, hidden: int = 16, scale: float = 1.5) -> None:
        super().__init__()
        conv = nn.Conv2d if spatial_dims == 2 else nn.Conv3d
        self.net = nn.Sequential(conv(embed_dim, hidden, 1), nn.ReLU(), conv(hidden, 1, 1))
        self.scale = scale
        nn.init.constant_(self.net[2].bias, -0.5)  # start at the filter bank's background mean

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.tanh(self.net(emb) / self.scale)[:, 0]


class Backbone(nn.Module):
    """Network + standardisation + prior head: image batch (B, C, *spatial) -> (embedding, prior mean)."""

    def __init__(self, model: dict) -> None:
        super().__init__()
        self.model_config = dict(model)
        self.spatial_dims = int(model.get("spatial_dims", 2))
        self.embed_dim = int(model.get("embed_dim", 16))
        self.net = build_network(model)
        self.prior_head = PriorHead(self.embed_dim, self.spatial_dims, int(model.get("prior_hidden", 16)))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = torch.stack([standardise(e) for e in self.net(x)])
        return emb, self.prior_head(emb)


# -- input normalisation (shared by training and inference) ---------------------------------------
def normalise_2d(array: np.ndarray) -> np.ndarray:
    """(H, W, C) raster -> (3, H, W) float32: RGB / 255 centred, grey replicated."""
    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    a = a[..., :3]
    if a.max(initial=0) > 1.5:
        a = a / 255.0
    return centre_2d(a).transpose(2, 0, 1)


INPUT_CENTRE, INPUT_SCALE = 0.45, 0.25  # a 2D network's input: (value in 0..1 - centre) / scale


def centre_2d(a: np.ndarray) -> np.ndarray:
    """Values in about 0..1 (RGB / 255, or a volume's window) centred as every 2D network's input, float32."""
    return ((a - INPUT_CENTRE) / INPUT_SCALE).astype(np.float32)


def rgb_of_input(x: np.ndarray) -> np.ndarray:
    """The (H, W, 3) uint8 RGB image a (3, H, W) network input shows (the inverse of :func:`normalise_2d`, clipped)."""
    rgb = np.clip(np.asarray(x, np.float32) * INPUT_SCALE + INPUT_CENTRE, 0.0, 1.0) * 255.0
    return np.round(np.moveaxis(rgb, 0, -1)).astype(np.uint8)


def normalise_3d(array: np.ndarray) -> np.ndarray:
    """(*spatial) or (*spatial, 1) volume -> (1, *spatial) float32 scaled by its 0.5/99.5 percentiles."""
    a = np.asarray(array, dtype=np.float32)
    if a.ndim == 4:
        a = a[..., 0]
    sample = a.reshape(-1)[:: max(1, a.size // 2_000_000)]
    lo, hi = np.percentile(sample, [0.5, 99.5])
    return np.clip((a - lo) / max(hi - lo, 1e-6), -0.5, 1.5)[None].astype(np.float32)


def resize_long_side(shape: tuple[int, int], long_side: int, multiple: int = 16) -> tuple[int, int]:
    """Network input size: long side ``long_side``, both sides multiples of ``multiple`` (UNet strides)."""
    s = long_side / max(shape)
    return tuple(max(multiple, int(round(n * s / multiple)) * multiple) for n in shape)


class BackboneExtractor(FeatureExtractor):
    """The FeatureExtractor over a trained :class:`Backbone`: its embedding, the GP settings it was
    trained with and its prior-mean head.  One network pass serves both :meth:`features` and
    :meth:`prior_mean` of an image: its outputs are kept for the last image asked about."""

    prescaled = False

    def __init__(self, backbone: Backbone, gp_config: dict, config: dict, device: str = "cpu", path: str = "") -> None:
        self.backbone = backbone.eval().to(device)
        self.device = torch.device(device)
        self.gp_config = dict(gp_config)
        self.trained_ndim = backbone.spatial_dims  # a 2D network also runs on volumes, slice by slice
        self.config = config
        self.model = backbone.model_config
        # the features it was trained beside, in one product kernel (volseg.train.loop.stacked_features)
        self.stack = tuple(self.model.get("stack") or ())
        self.name = f"backbone:{Path(path).name}" if path else "backbone"
        # (image, embedding or None once handed out, prior mean) of the last image the network ran on
        self._outputs: tuple[Image, np.ndarray | None, np.ndarray, int | None] | None = None

    @property
    def infer_long_side(self) -> int:
        """The long side a 2D image is resized to for the network (the checkpoint's inference size)."""
        return int(self.model.get("infer_long_side") or self.model.get("long_side", 192))

    def features(self, image: Image, budget: int | None = None, *, long_side: int | None = None) -> np.ndarray:
        """``long_side``: run a 2D image at this long side instead of :attr:`infer_long_side` (a video's small
        object, zoomed as its working grid is)."""
        self._check_dimension(image)
        budget = feature_budget(budget)
        n, D = int(np.prod(image.shape)), self.backbone.embed_dim
        dtype = np.float32 if n * D * 4 <= budget // 4 else np.float16
        # the network output (float32, plus MONAI's weight map in 3D), the stored copy, the prior and the input
        need = n * D * (4 + np.dtype(dtype).itemsize) + n * 4 * 3 + image.array.nbytes
        if need > budget:
            raise MemoryBudgetError(f"image of shape {image.shape} needs about {format_bytes(need)} for its {D} "
                                    f"learned features, over the memory budget of {format_bytes(budget)}")
        emb, prior = self._run(image, embedding=True, long_side=long_side)
        # the embedding is the caller's now: the small prior map is kept
        self._outputs = (image, None, prior, long_side)
        return np.moveaxis(emb, 0, -1).astype(dtype)

    def prior_mean(self, image: Image) -> np.ndarray | None:
        self._check_dimension(image)
        if self._slice_by_slice(image):  # the head knows photographs' objects, not a volume's organs
            return None
        return self._run(image, embedding=False)[1]

    def _slice_by_slice(self, image: Image) -> bool:
        return self.backbone.spatial_dims == 2 and image.ndim == 3

    def _check_dimension(self, image: Image) -> None:
        if image.ndim != self.backbone.spatial_dims and not self._slice_by_slice(image):
            raise InputError(f"{self.name} is a {self.backbone.spatial_dims}D model; the image is {image.ndim}D")

    @torch.no_grad()
    def _run(self, image: Image, *, embedding: bool, long_side: int | None = None) -> tuple[np.ndarray | None,
                                                                                              np.ndarray]:
        """(embedding (D, *spatial), prior mean (*spatial) float32) of ``image``, from the network's
        last pass where that was on this image (at this size) and kept what is asked for (without
        ``embedding`` the embedding may be None: handed out already)."""
        kept = self._outputs
        if kept is None or kept[0] is not image or kept[3] != long_side or (embedding and kept[1] is None):
            if self._slice_by_slice(image):
                emb, prior = self._run_slices(image)
            elif image.ndim == 2:
                emb, prior = self._run_2d(image, long_side or self.infer_long_side)
            else:
                emb, prior = self._run_3d(image)
            self._outputs = (image, emb, None if prior is None else prior.astype(np.float32), long_side)
        return self._outputs[1:3]

    def _run_2d(self, image: Image, long_side: int) -> tuple[np.ndarray, np.ndarray]:
        x = torch.from_numpy(normalise_2d(image.array)).to(self.device)[None]
        size = resize_long_side(image.shape, long_side)
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        emb = self.backbone.embed(x)
        # upsample the raw embedding, then standardise and apply the head on the image grid
        emb = F.interpolate(emb, size=image.shape, mode="bilinear", align_corners=False)[0]
        return self._finish(emb)

    def _run_slices(self, image: Image) -> tuple[np.ndarray, None]:
        """A 2D network on a volume (2.5D): run on every slice across the axis of the coarsest spacing (the
        acquisition's slices), each slice windowed by the volume's percentiles as grey, and the slices'
        embeddings stacked back and standardised over the volume together."""
        axis = int(np.flatnonzero(np.asarray(image.spacing) >= max(image.spacing) - 1e-6)[-1])
        grey = np.moveaxis(normalise_3d(image.array)[0], axis, 0)  # about 0..1 inside the window
        size = resize_long_side(grey.shape[1:], self.infer_long_side)
        out = torch.empty((self.backbone.embed_dim,) + grey.shape, dtype=torch.float32)
        for a in range(0, grey.shape[0], SLICE_BATCH):
            x = torch.from_numpy(centre_2d(grey[a:a + SLICE_BATCH])).to(self.device)
            x = x[:, None].expand(-1, 3, -1, -1)
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
            emb = F.interpolate(self.backbone.embed(x), size=grey.shape[1:], mode="bilinear", align_corners=False)
            out[:, a:a + SLICE_BATCH] = emb.transpose(0, 1).float().cpu()
        return standardise(torch.movedim(out, 1, axis + 1)).numpy(), None  # no head on a volume: no prior

    def _run_3d(self, image: Image) -> tuple[np.ndarray, np.ndarray]:
        from monai.inferers import sliding_window_inference  # noqa: PLC0415 -- slow to import (as above)

        x = torch.from_numpy(normalise_3d(image.array)).to(self.device)[None]
        roi = tuple(int(r) for r in self.model.get("roi_size", (64, 64, 64)))
        emb = sliding_window_inference(x, roi_size=roi, sw_batch_size=int(self.model.get("sw_batch_size", 1)),
                                       predictor=self.backbone.embed, overlap=float(self.model.get("overlap", 0.25)),
                                       mode="gaussian", sw_device=self.device, device=torch.device("cpu"))[0]
        return self._finish(emb)

    def _finish(self, emb: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        emb = standardise(emb.float())
        head = self.backbone.prior_head
        prior = head(emb[None].to(next(head.parameters()).device))[0]
        return emb.cpu().numpy(), prior.cpu().numpy()


# -- checkpoints ----------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, backbone: Backbone, config: dict, gp_config: dict, *, manifest_sha256: str = "",
                    metrics: dict | None = None, extra: dict | None = None) -> Path:
    """Write a checkpoint atomically (a half-written file never replaces a good one)."""
    net_state = {k: v.detach().cpu() for k, v in backbone.net.state_dict().items()}
    head_state = {k: v.detach().cpu() for k, v in backbone.prior_head.state_dict().items()}
    ckpt = {"format": FORMAT, "config": config, "state_dict": net_state, "prior_head": head_state,
            "gp_config": dict(gp_config), "manifest_sha256": manifest_sha256, "metrics": dict(metrics or {})}
    ckpt.update(extra or {})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path


def read_checkpoint(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise InputError(f"backbone checkpoint {p} does not exist")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises many kinds for a truncated or foreign file
        raise InputError(f"backbone checkpoint {p} cannot be read ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise InputError(f"{p} is not a volseg backbone checkpoint (format {got!r}, expected {FORMAT!r})")
    for key in ("config", "state_dict", "prior_head", "gp_config"):
        if key not in ckpt:
            raise InputError(f"backbone checkpoint {p} has no {key!r} entry")
    return ckpt


def backbone_from_checkpoint(ckpt: dict, path: str | Path = "") -> Backbone:
    model = ckpt["config"].get("model")
    if not isinstance(model, dict):
        raise InputError(f"backbone checkpoint {path} has no model section in its config")
    backbone = Backbone(model)
    try:
        backbone.net.load_state_dict(ckpt["state_dict"])
        backbone.prior_head.load_state_dict(ckpt["prior_head"])
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise InputError(f"backbone checkpoint {path} does not match its model config: {first}") from None
    return backbone


def load_backbone(path: str | Path, device: str = "cpu") -> BackboneExtractor:
    """A FeatureExtractor from a checkpoint; InputError naming the file if it is missing or wrong."""
    ckpt = read_checkpoint(path)
    backbone = backbone_from_checkpoint(ckpt, path)
    return BackboneExtractor(backbone, ckpt["gp_config"], ckpt["config"], device=device, path=str(path))


__all__ = ["Backbone", "BackboneExtractor", "FORMAT", "PriorHead", "build_network", "load_backbone",
           "normalise_2d", "normalise_3d", "read_checkpoint", "resize_long_side", "save_checkpoint"]
