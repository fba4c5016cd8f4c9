"""The supervoxel field's share of the ``sum`` latent (``GPConfig.latent``), kept on its nodes.

Under ``sum`` the latent is one GP whose kernel is the stationary one plus ``a(x) rho(x, y) a(y)``:
``rho`` the GMRF's correlation (:meth:`volseg.gp.gmrf.GMRF.correlation`), ``a^2`` its share of the prior
variance.  The GP's solve holds both Gram matrices (:class:`volseg.gp.posterior.ExactPosterior` with
``gram``); this module gives it the field's, and turns its weights into the field's part of the posterior
mean, ``background + k_field(x, X) alpha``, which is known on the nodes.  The Session's maps hold that part
voxel by voxel (each voxel its node's value), as the prior mean the stationary share is evaluated on; after
a click they take its change only on the nodes that moved by more than a tolerance, and the values the maps
hold are tracked per node, so what a click leaves out never adds up over clicks.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .evaluate import Box
from .gmrf import GMRF
from .reach import block_boxes

# the side in voxels of the blocks in which the field's change is brought onto the maps: small enough to
# follow the supervoxels, large enough that the boxes stay few
FIELD_BLOCK = 16


class FieldShare:
    """The field's share of a ``sum`` latent for one image: ``gram`` at the training points, ``mean`` on the
    nodes for the posterior's weights, and ``shown``, the node values the maps hold (None: the background)."""

    def __init__(self, field: GMRF, *, share: float, anchor_share: float, background: float) -> None:
        """``share`` and ``anchor_share``: the field's prior variance (times the outputscale) everywhere and
        near each object's first positive click (0: no anchor); ``background``: the latent's prior mean."""
        self.field, self.share, self.anchor_share, self.background = field, share, anchor_share, background
        self.reset()

    def reset(self) -> None:
        self.columns = np.zeros((self.field.n, 0))  # k_field(node, X): (nodes, N)
        self.shown: np.ndarray | None = None        # (nodes, K) float32 the maps hold, for ``shown_objects``
        self.shown_objects: list[int] = []

    @property
    def labels(self) -> np.ndarray:
        """Each voxel's node."""
        return self.field.graph.labels

    def nodes_at(self, voxels: np.ndarray) -> np.ndarray:
        """The node of each voxel (N, ndim), (N,)."""
        return self.labels[tuple(voxels.T)] if len(voxels) else np.zeros(0, np.int64)

    def gram(self, voxels: np.ndarray, anchors: Sequence[int]) -> np.ndarray:
        """The field's kernel between the training points at ``voxels`` (N, ndim), (N, N); ``anchors``: the
        indices of the points that are their object's first positive click.  Keeps the kernel's columns
        over every node for :meth:`mean`."""
        nodes = self.nodes_at(voxels)
        correlations = [self.field.correlation(int(v)) for v in nodes]
        amplitude = self.amplitude([correlations[i] for i in anchors])
        self.columns = np.stack([rho * amplitude * amplitude[v] for rho, v in zip(correlations, nodes)], 1) \
            if len(nodes) else np.zeros((self.field.n, 0))
        at_points = self.columns[nodes]
        return 0.5 * (at_points + at_points.T)

    def amplitude(self, anchor_correlations: Sequence[np.ndarray]) -> np.ndarray:
        """The share's prior standard deviation on every node, (nodes,): ``sqrt(share)``, or with an anchor
        share blended towards ``sqrt(anchor_share)`` by each node's correlation with its object's first
        positive click (the largest over objects).  A kernel times ``a(x) a(y)`` is still a kernel: the region
        the first click's field reaches carries its label with a larger share (the click fills its object),
        while a later click outside that region keeps the smaller one."""
        if self.anchor_share <= 0 or not len(anchor_correlations):
            return np.full(self.field.n, self.share ** 0.5)
        near = np.max([np.clip(rho, 0.0, 1.0) for rho in anchor_correlations], 0)
        return np.sqrt(self.share + (self.anchor_share - self.share) * near)

    def mean(self, alpha: np.ndarray) -> np.ndarray:
        """The share's part of the posterior mean on the nodes plus the background, (nodes, K) float64, for
        the posterior's weights ``alpha`` (N, K)."""
        return self.background + self.columns @ alpha

    def show(self, alpha: np.ndarray, objects: list[int]) -> None:
        """The maps now hold the exact field for ``alpha`` (a whole re-evaluation; no weights: the background)."""
        self.shown = self.mean(alpha).astype(np.float32) if len(alpha) else None
        self.shown_objects = list(objects)

    def catch_up(self, alpha: np.ndarray, objects: list[int], tolerance: float) -> tuple[np.ndarray, np.ndarray]:
        """What the maps must add where the field moved by more than ``tolerance`` since they were last
        brought up to date: (nodes, K) changes (0 elsewhere) and the (nodes,) bool of the nodes that moved.
        ``shown`` takes those nodes' new values."""
        field = self.mean(alpha)
        shown = np.full_like(field, self.background) if self.shown is None else self.shown.astype(np.float64)
        delta = field - shown
        moved = np.abs(delta).max(1) > tolerance
        shown[moved] = field[moved]
        self.shown, self.shown_objects = shown.astype(np.float32), list(objects)
        return np.where(moved[:, None], delta, 0.0), moved

    def blocks(self, moved: np.ndarray, shape: Sequence[int], extra: tuple[np.ndarray, np.ndarray] | None = None
               ) -> list[Box]:
        """Boxes on a FIELD_BLOCK grid covering the ``moved`` nodes' bounding boxes (and ``extra`` (lo, hi)
        corners), each block once."""
        lo, hi = self.field.graph.bounds
        lo, hi = lo[moved], hi[moved]
        if extra is not None:
            lo, hi = np.concatenate([lo, extra[0]]), np.concatenate([hi, extra[1]])
        return block_boxes(lo, hi, shape, FIELD_BLOCK)

    def prior_mean(self, objects: Sequence[int], box: Box, device: torch.device) -> torch.Tensor:
        """The shown field of ``objects`` over ``box`` as a prior mean, (n, K) (an object the maps do not hold
        yet: the background)."""
        background = np.full(self.field.n, self.background, np.float32)
        values = np.stack([self.shown[:, self.shown_objects.index(o)] if o in self.shown_objects else background
                           for o in objects], 1)
        n = int(np.prod([s.stop - s.start for s in box]))
        return self.on_voxels(values, box, device).reshape(len(objects), n).T

    def on_voxels(self, node_values: np.ndarray, box: Box, device: torch.device) -> torch.Tensor:
        """(nodes, K) values at the voxels of ``box``, as a (K, *box) float32 map on ``device``."""
        labels = self.labels[box]
        # one object at a time, straight into the box's shape: a flattened copy of a strided box and one
        # (n, K) gather took twice as long
        values = np.asarray(node_values, dtype=np.float32)
        return torch.from_numpy(np.stack([np.take(values[:, k], labels) for k in range(values.shape[1])])).to(device)


__all__ = ["FIELD_BLOCK", "FieldShare"]
