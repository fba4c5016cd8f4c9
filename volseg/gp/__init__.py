"""The Gaussian-process engine: latent f over [features / l_f, position / l_s], clicks as +-1 targets.

* :mod:`.kernels` -- stationary kernels on pre-scaled inputs and the squared distance (torch or numpy);
* :mod:`.linalg` -- Cholesky with jitter and the noise loop that keeps clicked labels, for every posterior;
* :mod:`.posterior` -- the session's exact posterior, bordered click by click; :mod:`.inputs` builds its inputs;
* :mod:`.evaluate` / :mod:`.fused` -- the posterior over boxes of locations in bounded chunks (C fast path);
* :mod:`.reach` -- where one click can move the maps; :mod:`.sampling` -- pathwise posterior samples;
* :mod:`.gmrf` -- a GMRF on supervoxels (a GP with sparse precision), the latent of ``GPConfig.latent`` gmrf;
* :mod:`.likelihood` -- the probit link; :mod:`.differentiable` -- the same model with autograd, for training.

The video GP (:mod:`volseg.video.gp`) is a numpy posterior on the same kernels and linear algebra.
"""
from __future__ import annotations

from .evaluate import evaluate_boxes
from .inputs import InputMap
from .kernels import KERNELS, RBF, Matern, MultiScaleRBF, make_kernel, squared_distance
from .likelihood import probit
from .linalg import LABEL_MARGIN, cholesky_solve, cholesky_with_jitter, solve_keeping_labels
from .posterior import ExactPosterior
from .reach import Box
from .sampling import PathwiseSampler

__all__ = ["Box", "ExactPosterior", "InputMap", "KERNELS", "LABEL_MARGIN", "Matern", "MultiScaleRBF", "PathwiseSampler",
           "RBF", "cholesky_solve", "cholesky_with_jitter", "evaluate_boxes", "make_kernel", "probit",
           "solve_keeping_labels", "squared_distance"]
