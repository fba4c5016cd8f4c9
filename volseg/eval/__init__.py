"""Benchmarks: simulated-click evaluation of volseg and classical baselines.

2D (RITM / f-BRS protocol): :mod:`.datasets`, :mod:`.robot`, :mod:`.metrics`, :mod:`.methods`,
:mod:`.baselines`, :mod:`.run2d`, :mod:`.report`, command ``volseg eval`` in :mod:`.cli2d`.
3D: :mod:`.robot3d`, :mod:`.metrics3d`, :mod:`.run3d`, command ``volseg eval3d``.
Submodules are imported on use so that ``import volseg.eval`` stays light.
"""
