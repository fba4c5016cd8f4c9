"""The one compiled part: the fused posterior evaluation (volseg/gp/_fused.c).

It is optional: where no C compiler is found the package installs without it and evaluates
the posterior through torch (volseg/gp/fused.py says which path runs).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "volseg.gp._fused", ["volseg/gp/_fused.c"],
    # contraction into FMAs and no errno from sqrtf are what let the lane loops vectorise
    extra_compile_args=["-O3", "-ffp-contract=fast", "-fno-math-errno"],
    optional=True,
)])
