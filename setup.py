"""The one compiled part: the fused posterior evaluation (volseg/gp/_fused.c).

It is optional: where no C compiler is found the package installs without it and evaluates
the posterior through torch (volseg/gp/fused.py says which path runs).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "volseg.gp._fused", ["volseg/gp/_fused.c"],
    depends=["volseg/gp/_fused_rbf.h"],  # the RBF pass's body, included once per instruction set
    # FMAs and an errno-free sqrtf keep the vector code vectorised; -Wno-psabi: every helper that
    # takes or returns a vector is inlined, so no vector crosses a call between clones
    extra_compile_args=["-O3", "-ffp-contract=fast", "-fno-math-errno", "-Wno-psabi", "-pthread"],
    extra_link_args=["-pthread"],  # a click's chunks are shared by POSIX threads
    optional=True,
)])
