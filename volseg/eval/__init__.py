"""Benchmarks: simulated-click evaluation of volseg and classical baselines.

The robot is :mod:`volseg.robot` and the measures :mod:`volseg.metrics` (shared with training).
2D (RITM / f-BRS protocol): :mod:`.datasets`, :mod:`.methods`, :mod:`.baselines`, :mod:`.run2d`,
:mod:`.report`, command ``volseg eval`` in :mod:`.cli2d`.
3D: :mod:`.run3d`, command ``volseg eval3d`` in :mod:`.cli3d`.
Video (DAVIS): :mod:`.davis`, :mod:`.run_video`, command ``volseg eval-video``.
Submodules are imported on use so that ``import volseg.eval`` stays light.
"""
