"""Where a click re-evaluates: per-click radii from the weights that moved, and boxes covering their balls."""
import numpy as np
import pytest
import torch

from volseg.gp.kernels import RBF, Matern
from volseg.gp.reach import ball_boxes, box_size, influence_radii, merge_boxes


@pytest.mark.parametrize("kernel", [RBF(), RBF(2.0), Matern(1.5)])
def test_radii_bound_every_term(kernel):
    mean_w, var_w, tol = np.array([3.0, 1e-3, 0.0, 1e-9]), np.array([0.5, 0.2, 0.0, 0.0]), 1e-5
    radii = influence_radii(kernel, mean_w, var_w, tol)
    m = 3  # clicks with any weight
    assert radii[2] == 0 and radii[3] == 0  # a click whose weight did not move reaches nowhere
    assert radii[0] > radii[1] > 0          # a larger move reaches further
    for r, cm, cv in zip(radii, mean_w, var_w):
        k = float(kernel(torch.tensor([[r, 0.0]], dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)))
        assert cm * k <= tol / m * (1 + 1e-6) and cv * k <= tol ** 0.5 / m * (1 + 1e-6)


@pytest.mark.parametrize("shape", [(60, 50), (40, 44, 30)])
def test_ball_boxes_cover_the_balls_once_and_less_than_their_boxes(shape):
    rng = np.random.default_rng(0)
    ndim = len(shape)
    centres = rng.integers(0, shape, size=(5, ndim))
    half = rng.uniform(3, 12, size=(5, 1)) * rng.uniform(0.7, 1.3, size=(5, ndim))
    boxes = ball_boxes(centres, half, shape)
    count = np.zeros(shape, int)
    for b in boxes:
        count[b] += 1
    assert count.max() == 1  # disjoint: no location is evaluated twice in one update
    grid = np.indices(shape).astype(float)
    inside = np.zeros(shape, bool)
    for c, h in zip(centres, half):
        inside |= (((grid - c.reshape((-1,) + (1,) * ndim)) / h.reshape((-1,) + (1,) * ndim)) ** 2).sum(0) <= 1
    assert count[inside].min() == 1  # every location of every ball is covered
    per_ball = [tuple(slice(max(0, int(c - w)), min(n, int(c + w) + 1)) for c, w, n in zip(cc, hh, shape))
                for cc, hh in zip(centres, half)]
    assert sum(box_size(b) for b in boxes) < sum(box_size(b) for b in merge_boxes(per_ball))


def test_ball_boxes_of_nothing():
    assert ball_boxes(np.zeros((1, 3)), np.zeros((1, 3)), (10, 10, 10)) == []
    assert ball_boxes(np.zeros((0, 2)), np.zeros((0, 2)), (10, 10)) == []
