"""Training a MONAI backbone end to end through the GP posterior (``volseg train --config ...``).

:mod:`.simulate` places the random initial clicks as RITM does (later clicks: :mod:`volseg.robot`),
:mod:`.losses` scores the posterior probability,
:mod:`.data` reads image/mask pairs (2D folders, 3D NIfTI, or generated shapes), :mod:`.loop`
runs the optimisation with checkpoints, resume, CSV/TensorBoard logs and torchrun data parallelism.
"""
from __future__ import annotations

from .loop import train

__all__ = ["train"]
