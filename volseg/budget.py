"""How a Session splits its memory budget between the posterior maps, one evaluation chunk and the features."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import GPConfig
from .errors import MemoryBudgetError
from .image import Image
from .units import format_bytes, parse_bytes


@dataclass(frozen=True)
class BudgetSplit:
    chunk: int     # bytes one evaluation pass over the image may hold
    maps: int      # bytes of the cached maps (mean for one object, variance) plus one chunk
    features: int  # bytes left for the features


def split_budget(image: Image, config: GPConfig) -> BudgetSplit:
    """The cached maps and one evaluation chunk come off the top of ``config.memory_budget``; the features
    get what is left, and say so themselves if it is not enough.  The chunk shrinks to a quarter of a small
    budget: it only sets how many locations one evaluation pass takes.  A MemoryBudgetError if the maps
    and the image alone do not fit."""
    budget = parse_bytes(config.memory_budget, what="memory budget")
    n = int(np.prod(image.shape))
    chunk = min(parse_bytes(config.chunk_bytes, what="chunk_bytes"), max(budget // 4, 1))
    maps = 2 * n * 4 + chunk
    if maps + image.array.nbytes >= budget:
        raise MemoryBudgetError(
            f"image of shape {image.shape} needs {format_bytes(maps + image.array.nbytes)} for its posterior maps "
            f"alone, over the memory budget of {format_bytes(budget)} (raise --memory-budget or crop the image)")
    return BudgetSplit(chunk=chunk, maps=maps, features=budget - maps)
