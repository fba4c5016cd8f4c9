"""Session: the whole interactive API.  It owns the image, its features, the clicks and the posterior.

    s = Session(features="filterbank", device="cpu")
    s.set_image("ct.nii.gz")
    s.add_click((120, 88, 14), positive=True)     # index coordinates, array axis order
    s.add_click((140, 90, 14), positive=False)
    s.mask(), s.probability(), s.uncertainty(), s.suggest_click()
    s.undo(); s.save("mask.nii.gz")

The same calls work for 2D and 3D.  Each click is a GP training point; after a click only the
region it can change is re-evaluated (the spatial factor of the kernel bounds its reach), so the
per-click cost does not grow with the volume.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .budget import split_budget
from .clicks import Click, make_click, validate_clicks
from .config import GPConfig
from .errors import ClickError, InputError, VolsegError
from .features import FilterBank, get_extractor
from .features.base import learned_settings
from .features.tiles import TiledFeatures
from .gp.evaluate import Box, evaluate_boxes, slabs
from .gp.field_share import FieldShare
from .gp.gmrf import GMRF, SupervoxelGraph
from .gp.inputs import InputMap
from .gp.kernels import make_kernel
from .gp.likelihood import probit
from .gp.posterior import ExactPosterior
from .gp.reach import ball_boxes, box_size, influence_radii, merge_boxes, moved_weights
from .gp.sampling import PathwiseSampler
from .image import Image
from .io import read_image, write_mask
from .mask import MaskStage
from .seeds import homogeneous_points

# the smallest image segmented: MIN_SIDE locations along at least two axes (a volume of one slice is
# a 2D image; a line of pixels or a single one is not an image to segment)
MIN_SIDE = 2
VOXELS_PER_CALL = 65536  # locations whose kernel row to the clicks one variance call holds


@dataclass(frozen=True)
class TrainingPoint:
    voxel: tuple[int, ...]
    positive: bool
    object: int
    extra: float                # noise on top of the GP's: 0 for a click, more for a point a click lends its label


@dataclass(frozen=True)
class Suggestion:
    position: tuple[int, ...]   # index coordinates of the suggested click
    predicted_label: int        # what the current mask says there (0 background)
    score: float                # posterior std times the density of the latent at 0


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise VolsegError(f"device {device!r} requested but CUDA is not available on this machine")
    if device != "cpu" and not device.startswith("cuda"):
        raise VolsegError(f"unknown device {device!r}: cpu, cuda or auto")
    return torch.device(device)


def as_image(image: Image | np.ndarray | str | Path) -> Image:
    """Paths are read from disk; arrays follow skimage's convention: (H, W) grey, (H, W, 3|4) RGB, else a volume."""
    if isinstance(image, Image):
        return image
    if isinstance(image, (str, Path)):
        return read_image(image)
    a = np.asarray(image)
    if a.ndim == 2:
        return Image.from_array(a)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        return Image(a[..., :3])
    if a.ndim == 3:
        return Image.from_array(a)
    if a.ndim == 4:
        return Image(a)
    raise InputError(f"cannot interpret an array of shape {a.shape} as a 2D or 3D image")


DEFAULT_CONFIG = GPConfig()


class Session:
    def __init__(self, features="filterbank", device: str = "cpu", config: GPConfig | dict | None = None,
                 **settings) -> None:
        self.device = resolve_device(device)
        self.extractor = get_extractor(features, device=str(self.device))
        base = config if isinstance(config, GPConfig) else GPConfig.from_dict(config)
        # a learned backbone brings the GP settings it was trained with (for images like its training
        # images: set_image resolves them per image); explicit ones still win: keyword settings, a config
        # dict's keys, the settings a config file names and a config's settings that differ from the defaults
        chosen = set(config) if isinstance(config, dict) else base.named | {
            k for k, v in base.to_dict().items() if v != getattr(DEFAULT_CONFIG, k)}
        self._config_parts = (base, {**{k: getattr(base, k) for k in chosen}, **settings})
        self.config = self._resolve_config(None)
        make_kernel(self.config.kernel or "rbf", spatial_dims=2)  # an unknown kernel name fails here, not at set_image
        self.kernel = None  # made by set_image: the default depends on the image's dimension
        self.image: Image | None = None
        self.clicks: list[Click] = []
        self.timings: list[float] = []
        self._feature_seconds = 0.0
        self.feature_tiles: TiledFeatures | None = None

    # -- image -----------------------------------------------------------------------------------
    def set_image(self, image: Image | np.ndarray | str | Path, prior: np.ndarray | Image | None = None) -> "Session":
        """Compute and cache the features of a new image; clears the clicks.  ``prior``: a label map or a
        probability map on the same grid, refined by the clicks that follow."""
        img = as_image(image)
        img.check_finite()
        if sum(n >= MIN_SIDE for n in img.shape) < 2:
            raise InputError(f"image of size {'x'.join(map(str, img.shape))} is too small to segment: volseg needs "
                             f"at least {MIN_SIDE} pixels (voxels) along two axes")
        self.image = img
        self.config = self._resolve_config(img.ndim)
        self._budget = split_budget(img, self.config)
        t0 = time.perf_counter()
        self.feature_tiles = self._feature_tiles(img, self._budget.features)
        if self.feature_tiles is not None and self.device.type == "cpu":  # the lengthscale is folded in
            feats = torch.from_numpy(self.feature_tiles.array)
        elif self.feature_tiles is not None:  # a GPU reads them from its own memory: all of them, now
            feats = torch.from_numpy(self.feature_tiles.ensure_all()).to(self.device)
        else:
            feats = torch.as_tensor(self.extractor.features(img, budget=self._budget.features)).to(self.device)
        self._feature_seconds = time.perf_counter() - t0
        # a learned prior-mean head (GPCIS) gives m0(x) so the first click already has a shape to refine
        head = self.extractor.prior_mean(img)
        self._learned_mean = (None if head is None
                              else torch.as_tensor(np.asarray(head, dtype=np.float32), device=self.device))
        d_f = int(feats.shape[-1])
        cfg = self.config
        # a prior mask is a prior mean the GP refines; the sum's prior mean is the background's
        self.latent = "gp" if prior is not None else cfg.latent_for(img.ndim, int(np.prod(img.shape)))
        self.kernel = make_kernel(cfg.kernel_for(img.ndim), cfg.outputscale, spatial_dims=img.ndim,
                                  ratio=cfg.short_ratio, share=cfg.short_share_for(self.latent))
        extent = float(np.linalg.norm(np.asarray(img.shape) * np.asarray(img.spacing)))
        self.spatial_lengthscale = (self.config.spatial_lengthscale
                                    or self.config.spatial_fraction_for(img.ndim) * extent)
        # the features are ours: divide them by their lengthscale once here rather than on every click
        # (times sqrt(D), so the lengthscale means the same for any D; a stack scales its parts itself)
        if self.feature_tiles is None:
            per_feature = 1.0 if self.extractor.prescaled else d_f ** 0.5
            feats.mul_(1.0 / (self.config.feature_lengthscale * per_feature))
        lazy = self.feature_tiles is not None and self.device.type == "cpu"
        self.inputs = InputMap(feats, img.spacing, feature_lengthscale=1.0,
                               spatial_lengthscale=self.spatial_lengthscale,
                               ensure=self.feature_tiles.ensure if lazy else None)
        self._set_prior(prior)
        self.field_share = None
        if self.latent == "sum":  # the supervoxel graph and its factor, once per image
            graph = SupervoxelGraph(img.array, img.spacing, n_nodes=cfg.gmrf_nodes, range_mm=cfg.gmrf_range * extent,
                                    contrast=cfg.gmrf_contrast)
            # the correlation is normalised by sampled prior variances: taken with the factor, so the first
            # click does not wait for them
            field = GMRF(graph, cfg.outputscale, correlation=True, appearance=cfg.gmrf_appearance)
            self.field_share = FieldShare(field, share=cfg.gmrf_share * cfg.outputscale,
                                          anchor_share=cfg.gmrf_anchor_share * cfg.outputscale,
                                          background=cfg.background_mean)
        self._masks = MaskStage(img, self.config, max_variance=self.kernel.outputscale)
        self.reset()
        return self

    def _resolve_config(self, ndim: int | None) -> GPConfig:
        """The settings for an image of ``ndim`` spatial axes (None: before any image, as if learned-like):
        the base config, then the extractor's learned ones where they apply, then the explicit ones."""
        base, explicit = self._config_parts
        learned = self.extractor.gp_config if ndim is None else learned_settings(self.extractor, ndim)
        return base.replace(**{**learned, **explicit})

    @property
    def feature_seconds(self) -> float:
        """Seconds spent on features so far: at set_image, plus the tiles clicks have computed since."""
        if self.feature_tiles is None:
            return self._feature_seconds
        return self._feature_seconds + self.feature_tiles.seconds - self.feature_tiles.initial_seconds

    def _feature_tiles(self, img: Image, budget: int) -> TiledFeatures | None:
        """Filter-bank features of a volume come tile by tile (:mod:`volseg.features.tiles`): those of a
        whole CT (over ``on_demand_features_above`` voxels) where the clicks reach, so the first click
        need not wait for the whole volume (a GPU session takes every tile at once, so its features
        are the CPU's); smaller volumes all at once.  2D images, small volumes (with superpixels) and
        learned features are computed whole by their extractor."""
        bank, n = self.extractor, int(np.prod(img.shape))
        if not isinstance(bank, FilterBank) or img.ndim != 3 or bank.superpixels_for(n):
            return None
        d_f = bank.n_features(img.ndim, img.channels, n)
        return TiledFeatures(bank, img, budget=budget, scale=1.0 / (self.config.feature_lengthscale * d_f ** 0.5),
                             on_demand=n > self.config.on_demand_features_above)

    def _set_prior(self, prior) -> None:
        self._prior_labels = self._prior_prob = None
        self.objects: list[int] = []
        if prior is None:
            return
        arr = prior.array[..., 0] if isinstance(prior, Image) else np.asarray(prior)
        if isinstance(prior, Image):
            self.image.check_same_grid(prior, "prior mask")
        if arr.shape != self.image.shape:
            raise InputError(f"prior mask has shape {arr.shape}, the image has {self.image.shape}")
        if not np.isfinite(arr).all():
            raise InputError("prior mask contains NaN or Inf")
        probabilities = np.issubdtype(arr.dtype, np.floating) and arr.min() >= 0 and arr.max() <= 1
        if probabilities and not np.all(arr == np.round(arr)):
            self._prior_prob = torch.as_tensor(arr.astype(np.float32), device=self.device)
            self.objects = [1]
        else:
            labels = arr.astype(np.int64)
            if labels.min() < 0:
                raise InputError("prior mask has negative labels")
            self._prior_labels = torch.as_tensor(labels.astype(np.int32), device=self.device)
            self.objects = [int(v) for v in np.unique(labels) if v != 0]

    def _require_image(self) -> Image:
        if self.image is None:
            raise VolsegError("no image: call set_image first")
        return self.image

    # -- prior mean ------------------------------------------------------------------------------
    def _prior_mean(self, box: Box, objects: Sequence[int] | None = None) -> torch.Tensor:
        """m0 over a box, (n, K): +-prior_strength from a prior mask, else the background mean."""
        objects = self.objects if objects is None else objects
        n = int(np.prod([s.stop - s.start for s in box]))
        s = self.config.prior_strength
        if self._prior_prob is not None:
            col = (2.0 * self._prior_prob[box].reshape(n, 1) - 1.0) * s
            return col.expand(n, len(objects)).clone()
        if self._prior_labels is None:
            if self._learned_mean is not None:
                return self._learned_mean[box].reshape(n, 1).expand(n, len(objects)).clone()
            if self.field_share is not None and self.field_share.shown is not None:  # the field's share of the mean
                return self.field_share.prior_mean(objects, box, self.device)
            return torch.full((1, len(objects)), self.config.background_mean, device=self.device)  # broadcast
        lab = self._prior_labels[box].reshape(n, 1)
        ids = torch.as_tensor(objects, device=self.device)[None, :]
        return torch.where(lab == ids, s, -s).to(torch.float32)

    def _prior_mean_at(self, voxels: np.ndarray, objects: Sequence[int]) -> torch.Tensor:
        return torch.cat([self._prior_mean(tuple(slice(v, v + 1) for v in vox), objects) for vox in voxels]) \
            if len(voxels) else torch.zeros(0, len(objects))

    # -- clicks ----------------------------------------------------------------------------------
    def add_click(self, position: Sequence[float], positive: bool = True, object: int = 1) -> float:
        """Add a click (index coordinates); returns the seconds the update took."""
        img = self._require_image()
        click = validate_clicks([make_click(position, positive, object)], img.shape)[0]
        t0 = time.perf_counter()
        self._apply(self.clicks + [click])
        dt = time.perf_counter() - t0
        self.timings.append(dt)
        return dt

    def add_clicks(self, clicks: Sequence[Click]) -> None:
        """Add several clicks in order; in a volume the mask takes them as one step (held labels,
        :class:`volseg.mask.HeldLabels`), so their order does not change it."""
        with self._masks.one_step():
            for c in clicks:
                self.add_click(c.position, c.positive, c.object)

    def undo(self) -> None:
        if not self.clicks:
            raise ClickError("nothing to undo: there are no clicks")
        self._masks.undo(len(self.clicks))
        self._apply(self.clicks[:-1])
        self.timings = self.timings[: len(self.clicks)]

    def reset(self) -> None:
        """Forget the clicks (the image, its features and any prior stay)."""
        self._require_image()
        self.clicks, self.timings = [], []
        self._train_clicks: list[Click] = []
        self._points: list[TrainingPoint] = []
        self._seed_cache: dict = {}
        self.posterior = ExactPosterior(self.kernel, self.config.noise, self.device,
                                        per_point=self.config.noise_per_point_for(self.image.ndim))
        self._objects_fitted = list(self.objects)
        if self.field_share is not None:
            self.field_share.reset()
        self._masks.forget()
        self._evaluate_all()

    @staticmethod
    def _training_set(clicks: Sequence[Click]) -> list[Click]:
        """One training point per voxel: a later click on the same voxel replaces the earlier one."""
        last: dict[tuple[int, ...], Click] = {}
        for c in clicks:
            last.pop(c.voxel(), None)
            last[c.voxel()] = c
        return list(last.values())

    def _targets(self, points: Sequence["TrainingPoint"], objects: Sequence[int]) -> torch.Tensor:
        """+1 where a point is a positive of that object, -1 otherwise (negatives are background for all)."""
        y = torch.full((len(points), len(objects)), -1.0, dtype=torch.float64)
        for i, p in enumerate(points):
            if p.positive:
                y[i, objects.index(p.object)] = 1.0
        return y

    def _points_for(self, train: Sequence[Click]) -> list["TrainingPoint"]:
        """The GP's training points: each click, and after a positive click the weak points it lends its
        homogeneous neighbourhood (:mod:`volseg.seeds`), none of them on an earlier point.  A later click
        on such a point is a second observation there, the click's the one kept; so a click only ever
        appends points, and the update stays local."""
        taken: set[tuple[int, ...]] = set()
        points = []
        for i, c in enumerate(train):
            taken.add(c.voxel())
            points.append(TrainingPoint(c.voxel(), c.positive, c.object, 0.0))
            if not c.positive:
                continue
            for v in self._seeds(c, tuple(d.voxel() for d in train[:i] if not d.positive)):
                if v not in taken:
                    taken.add(v)
                    points.append(TrainingPoint(v, True, c.object, self.config.seed_noise))
        return points

    def _seeds(self, click: Click, negatives: tuple[tuple[int, ...], ...]) -> list[tuple[int, ...]]:
        n = self.config.seed_points
        if n <= 0:
            return []
        key = (click.voxel(), negatives)
        if key not in self._seed_cache:  # a click's points depend only on it and the negatives before it
            ls, cfg = self.spatial_lengthscale, self.config
            found = homogeneous_points(self.inputs.features, click.voxel(), self.image.spacing,
                                       radius=cfg.seed_radius * ls, n_points=n, similarity=cfg.seed_similarity,
                                       min_distance=cfg.seed_spacing * ls, avoid=negatives)
            self._seed_cache[key] = [tuple(int(x) for x in v) for v in found]
        return self._seed_cache[key]

    def _apply(self, clicks: list[Click]) -> None:
        """Move the posterior and the cached maps to a new click list, touching as little as possible."""
        objects = list(self.objects)
        for c in clicks:
            if c.positive and c.object not in objects:
                objects.append(c.object)
        # only negative clicks so far: no object yet, so the GP fits the background-only placeholder
        # column the maps keep (object 0), and the mask stays empty
        fit_objects = objects or [0]
        train = self._training_set(clicks)
        points = self._points_for(train)
        voxels = np.array([p.voxel for p in points], dtype=np.int64).reshape(len(points), -1)
        old = self._points
        if not old and self.posterior.n == 0 and objects != self._objects_fitted:
            # the first click of a session adds its object: the maps become the prior of the new object
            # list (no kernel work), and the click then acts only within its reach like any other
            self.objects, self._objects_fitted = list(objects), list(objects)
            self._evaluate_all()
        if self.latent == "sum":
            self._apply_sum(clicks, train, points, voxels, objects)
            return
        same = objects == self._objects_fitted
        grew = same and len(points) > len(old) and points[:len(old)] == old
        shrank = same and len(points) < len(old) and old[:len(points)] == points
        noise_before, balls = self.posterior.point_noise().clone(), []
        if grew:  # one point at a time, each bordering the factor; the union of their reaches is re-evaluated
            targets = self._targets(points, fit_objects)
            prior = self._prior_mean_at(voxels, fit_objects).double()
            for j in range(len(old), len(points)):
                alpha_before = self.posterior.alpha.clone()
                z = self.inputs.at(voxels[j:j + 1])
                self.posterior.append(z, targets[j:j + 1], prior[j:j + 1], points[j].extra)
                balls.append(self._reach(voxels[:j], voxels[j], z, points[j].extra, alpha_before, j))
        elif shrank:
            for j in range(len(old) - 1, len(points) - 1, -1):
                alpha_before = self.posterior.alpha.clone()
                z = self.posterior.Z[j:j + 1]  # the removed point's input, as it was appended
                self.posterior.truncate(j)
                balls.append(self._reach(voxels[:j], np.array(old[j].voxel), z, old[j].extra, alpha_before, j))
        else:
            self._refit(points, voxels, fit_objects, self._targets(points, fit_objects))
        self._commit(clicks, train, points, objects)
        # a changed noise (the fit lowers it so conflicting clicks keep their labels) moves every weight
        kept = min(len(noise_before), self.posterior.n)
        if not balls or any(b is None for b in balls) or \
                not torch.equal(self.posterior.point_noise()[:kept], noise_before[:kept]):
            self._evaluate_all()
            return
        boxes = ball_boxes(np.concatenate([c for c, _ in balls]), np.concatenate([h for _, h in balls]),
                           self.image.shape)
        self._evaluate_boxes(boxes)
        self.last_region = boxes

    def _apply_sum(self, clicks: list[Click], train: list[Click], points: list[TrainingPoint], voxels: np.ndarray,
                   objects: list[int]) -> None:
        """The latent is the sum of the GP and the GMRF, one GP on the sum of their kernels: the GP's
        solve holds both Gram matrices, and the GMRF's share of the mean, ``k_gmrf(x, X) alpha``, is
        added to the background as the prior mean the GP's own share is evaluated on.  The variance
        evaluated is the GP share's (its prior variance less what the clicks explain of it).  Every click
        refits every weight, but the maps move only where either share does (:meth:`_update_sum`)."""
        fit_objects = objects or [0]
        anchors, seen = [], set()  # each object's first positive point: where an anchored share is centred
        for i, p in enumerate(points):
            if p.positive and p.object not in seen:
                seen.add(p.object)
                anchors.append(i)
        gram = torch.from_numpy(self.field_share.gram(voxels, anchors))
        local = objects == self._objects_fitted
        before = self._weights() if local else None  # A^-1 and the weights, for what the refit moves
        # the clicks' targets are taken against the background mean, the sum's prior mean
        background = torch.full((len(points), len(fit_objects)), self.config.background_mean, dtype=torch.float64)
        self._refit(points, voxels, fit_objects, self._targets(points, fit_objects), gram, prior=background)
        self._commit(clicks, train, points, objects)
        if not local or not self.posterior.n:
            self._evaluate_all()
            return
        self._update_sum(before)

    def _weights(self) -> tuple[list, np.ndarray, np.ndarray]:
        """The posterior's training points (their voxels), weights alpha (N, K) and ``A^-1`` (N, N)."""
        post = self.posterior
        inverse = torch.cholesky_inverse(post.L).numpy() if post.n else np.zeros((0, 0))
        return [p.voxel for p in self._points], post.alpha.numpy().copy(), inverse

    def _update_sum(self, before: tuple[list, np.ndarray, np.ndarray]) -> None:
        """Bring the maps to the sum's new posterior where it moved by more than the tolerance (half of it
        for each share).  The GMRF's share is known on the nodes: the map takes its change on the
        supervoxels where it moved more (the values it holds are tracked per node, so what is left out
        never adds up over clicks).  The GP share moves by ``sum_i d alpha_i k(x, x_i)`` and its variance
        by ``A^-1``'s change (:func:`volseg.gp.reach.moved_weights`): within each point's ball it is
        re-evaluated, on the new field."""
        img, tol, share = self.image, 0.5 * self.config.tolerance, self.field_share
        delta, moved = share.catch_up(self.posterior.alpha.numpy(), list(self.objects or [0]), tol)
        field_boxes = share.blocks(moved, img.shape)
        self._add_field(delta, field_boxes)
        keys, mean_weights, var_weights = moved_weights(*before, *self._weights())
        radii = influence_radii(self.kernel, mean_weights, var_weights, tol)
        centres = np.asarray(keys, np.float64).reshape(-1, img.ndim)
        gp_boxes = ball_boxes(centres, radii[:, None] / self.inputs.pos_scale[None, :], img.shape)
        # the mask is redone once over both regions (they overlap much), on the grid of the field's boxes
        region = share.blocks(moved, img.shape, (np.array([[b.start for b in box] for box in gp_boxes]),
                                                 np.array([[b.stop for b in box] for box in gp_boxes]))) \
            if gp_boxes else field_boxes
        self._evaluate_boxes(gp_boxes, region)
        self.last_region = region
        self.last_update["field_locations"] = sum(box_size(b) for b in field_boxes)

    def _add_field(self, node_values: np.ndarray, boxes: list[Box]) -> None:
        """Add the supervoxel field's (nodes, K) values to the mean map over the boxes."""
        for box in boxes:
            self._mean[(slice(None),) + box] += self.field_share.on_voxels(node_values, box, self.device)

    def _refit(self, points: list[TrainingPoint], voxels: np.ndarray, fit_objects: list[int],
               targets: torch.Tensor, gram: torch.Tensor | None = None, prior: torch.Tensor | None = None) -> None:
        """Solve the GP from scratch on ``points`` (at ``voxels``), each with its own extra noise; ``gram``:
        a second latent's covariance at them, summed with the GP's (:meth:`ExactPosterior.fit`); ``prior``:
        the prior mean at them (default: the session's prior mean there)."""
        Z = self.inputs.at(voxels) if len(points) else torch.zeros(0, self.inputs.dim)
        prior = self._prior_mean_at(voxels, fit_objects).double() if prior is None else prior
        self.posterior.fit(Z, targets, prior, torch.tensor([p.extra for p in points], dtype=torch.float64), gram)

    def _commit(self, clicks: list[Click], train: list[Click], points: list[TrainingPoint],
                objects: list[int]) -> None:
        """Record the click list the posterior now holds."""
        self.clicks, self._train_clicks, self._points = list(clicks), train, points
        self.objects, self._objects_fitted = objects, list(objects)

    # -- map evaluation --------------------------------------------------------------------------
    def _max_bytes(self) -> int:
        return self._budget.chunk

    def _evaluate_all(self) -> None:
        img = self._require_image()
        K = max(len(self.objects), 1)
        self._mean = torch.empty((K,) + img.shape, dtype=torch.float32, device=self.device)
        self._var = torch.empty(img.shape, dtype=torch.float32, device=self.device)
        self._stale_var: list[Box] = []
        box = tuple(slice(0, n) for n in img.shape)
        self.last_region = box
        self._masks.invalidate(None)
        if self.field_share is not None:  # the field's share, exactly, on every node
            self.field_share.show(self.posterior.alpha.numpy(), list(self.objects or [0]))
        if self.posterior.n == 0:  # no clicks: the prior everywhere, and no kernel to evaluate
            self._mean.view(K, -1).copy_(self._prior_mean(box, self.objects or [0]).T.expand(K, -1))
            self._var.fill_(self.kernel.outputscale)
            self.last_update = {"locations": 0, "seconds": 0.0}
            self._latent_moved(None)
            return
        self._evaluate_boxes([box])

    def _reach(self, before: np.ndarray, point: np.ndarray, z: torch.Tensor, extra: float, alpha_before: torch.Tensor,
               common: int):
        """Where adding (or removing) one training point (at voxel ``point``, GP input ``z``) moved the mean
        or the variance by more than the tolerance: a ball around each point whose terms changed
        (:mod:`volseg.gp.reach`), as (centres, half-widths) in voxels; None where the weights of the first
        ``common`` points were refitted."""
        post = self.posterior
        if alpha_before.shape[0] < common or post.alpha.shape[0] < common:
            return None
        point_alpha = (post.alpha if post.n > common else alpha_before)[common].abs().max()
        if common:
            moved = (post.alpha[:common] - alpha_before[:common]).abs().amax(1)
        else:
            moved = torch.zeros(0, dtype=torch.float64)
        w, d2 = post.schur_complement(z, extra, common)
        reach = torch.cat([w.abs(), torch.ones(1, dtype=torch.float64)]).numpy() / max(d2, 1e-12) ** 0.5
        alphas = torch.cat([moved, point_alpha[None]]).numpy()
        radii = influence_radii(self.kernel, alphas, reach, self.config.tolerance)
        centres = np.concatenate([np.asarray(before, np.float64).reshape(-1, self.image.ndim),
                                  np.asarray(point, np.float64).reshape(1, -1)])
        return centres, radii[:, None] / self.inputs.pos_scale[None, :]

    def _evaluate_boxes(self, boxes: list[Box], changed: list[Box] | None = None) -> None:
        """Update the mean now (the mask needs it) and mark the variance stale there: it is computed
        when a probability, uncertainty or suggestion is asked for, which halves a click's cost.
        ``changed``: where the mean moved, if more than the boxes (the mask is redone there)."""
        objects = self.objects or [0]
        t0 = time.perf_counter()
        # the sum's prior mean is the GMRF's share, per voxel: evaluated on the background, one row for all
        # locations (a prior mean per location is gathered and copied chunk by chunk), then added after
        field = None if self.field_share is None else self.field_share.shown
        prior = (lambda b: self._prior_mean(b, objects)) if field is None else \
            (lambda b: torch.full((1, len(objects)), self.config.background_mean, device=self.device))
        evaluate_boxes(self.posterior, self.inputs, prior, boxes, self._mean, None, max_bytes=self._max_bytes())
        if field is not None:
            self._add_field(field - np.float32(self.config.background_mean), boxes)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        # what the last update's evaluation cost, for benchmarks (locations evaluated, seconds)
        self.last_update = {"locations": sum(box_size(b) for b in boxes),
                            "seconds": time.perf_counter() - t0}
        self._stale_var = merge_boxes(self._stale_var + list(boxes))
        self._latent_moved(boxes if changed is None else changed)

    def _latent_moved(self, boxes: list[Box] | None) -> None:
        """Tell the mask stage where the mean map moved (``None``: everywhere), after the clicks it holds."""
        self._masks.moved(boxes, self._mean, self.objects, self._train_clicks, len(self.clicks), self._variance_at)

    def _variance_at(self, voxels: np.ndarray) -> np.ndarray:
        """The posterior variance at (n, ndim) voxels, float64 (n,): what the variance map holds there,
        without bringing the whole map up to date."""
        out = np.empty(len(voxels))
        for a in range(0, len(voxels), VOXELS_PER_CALL):
            z = self.inputs.at(voxels[a:a + VOXELS_PER_CALL])
            _, var = self.posterior.mean_var(z, z[:, :0], with_mean=False)
            out[a:a + VOXELS_PER_CALL] = var.cpu().numpy()
        return out

    def _variance(self) -> torch.Tensor:
        """The posterior variance map, brought up to date over the regions clicks have changed."""
        evaluate_boxes(self.posterior, self.inputs, None, self._stale_var, None, self._var, max_bytes=self._max_bytes())
        self._stale_var = []
        return self._var

    # -- outputs ---------------------------------------------------------------------------------
    def _channel(self, object: int) -> int:
        if object not in self.objects:
            raise ClickError(f"object {object} has no clicks or prior; objects are {self.objects or 'none yet'}")
        return self.objects.index(object)

    def probability(self, object: int = 1) -> np.ndarray:
        """P(location belongs to ``object``) under the probit link, float32 (*spatial)."""
        self._require_image()
        if object not in self.objects:
            var = self._variance()
            return probit(torch.full_like(var, self.config.background_mean), var).cpu().numpy()
        return probit(self._mean[self._channel(object)], self._variance()).cpu().numpy()

    def mask(self) -> np.ndarray:
        """Label map: 0 background, else the object whose probability is highest and above 1/2
        (objects share the posterior variance, so that is the object with the largest positive mean),
        then cut onto image edges and cleaned by the clicks (:class:`volseg.mask.MaskStage`)."""
        self._require_image()
        # a prior may have several parts, so the step that keeps only the clicked ones is off with one
        topology = self._prior_labels is None and self._prior_prob is None
        return self._masks.labels(self._mean, self.objects, self._train_clicks, topology=topology).copy()

    def raw_labels(self, box: Box) -> np.ndarray:
        """Labels of ``box`` before the mask's clean-up (connected parts, holes, edge cut): the object
        with the largest positive latent mean, or the held labels in a volume.  Cheap where :meth:`mask` is
        not: a preview of it on a slice of a large volume, right after a click."""
        self._require_image()
        if not self.objects:
            return np.zeros(tuple(s.stop - s.start for s in box), dtype=np.uint8)
        return self._masks.raw(self._mean, self.objects, box)

    def uncertainty(self) -> np.ndarray:
        """Posterior standard deviation of the latent function, float32 (*spatial)."""
        self._require_image()
        return torch.sqrt(self._variance()).cpu().numpy()

    def suggest_click(self) -> Suggestion:
        """The location where a click would help most: uncertain (large std) and near the current
        boundary (latent mean near 0), i.e. the largest std x N(mean_max; 0, 1 + var) density."""
        self._require_image()
        var = self._variance()
        best = self._mean.max(0).values if self.objects else torch.full_like(var, self.config.background_mean)
        score = torch.sqrt(var) * torch.exp(-0.5 * best * best / (1.0 + var))
        flat = int(torch.argmax(score))
        pos = tuple(int(v) for v in np.unravel_index(flat, self.image.shape))
        return Suggestion(pos, int(self.mask()[pos]), float(score.reshape(-1)[flat]))

    def samples(self, n: int = 16, object: int = 1, *, n_basis: int = 1024, seed: int = 0,
                box: Box | None = None) -> np.ndarray:
        """Pathwise posterior samples of the latent f for ``object``: (n, *box shape), float32."""
        img = self._require_image()
        if not self.posterior.n:
            raise ClickError("posterior samples need at least one click")
        box = box or tuple(slice(0, s) for s in img.shape)
        sampler = PathwiseSampler(self.posterior, self.inputs.dim, n_samples=n, n_basis=n_basis, seed=seed)
        k = self._channel(object)
        shape = tuple(s.stop - s.start for s in box)
        out = np.empty((n,) + shape, dtype=np.float32)
        per = 4 * (n_basis * 2 + n * len(self.objects) + self.inputs.dim + self.posterior.n)
        for sub in slabs(box, max(1, self._max_bytes() // per)):
            f = sampler.sample(self.inputs.box(sub), self._prior_mean(sub))[:, k, :]
            local = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(sub, box))
            out[(slice(None),) + local] = f.T.reshape((n,) + tuple(s.stop - s.start for s in sub)).cpu().numpy()
        return out

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the label map in the image's geometry (atomically, never over the input)."""
        return write_mask(self.mask(), self._require_image(), path, overwrite=overwrite)

