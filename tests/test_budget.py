"""split_budget: the posterior maps and one chunk first, the features get the rest."""
from __future__ import annotations

import numpy as np
import pytest

from volseg.budget import split_budget
from volseg.config import GPConfig
from volseg.errors import MemoryBudgetError
from volseg.image import Image


def test_maps_and_chunk_come_off_the_top():
    img = Image.from_array(np.zeros((100, 120), np.float32))
    split = split_budget(img, GPConfig(memory_budget="64MB", chunk_bytes="1MB"))
    assert split.chunk == 1024 ** 2
    assert split.maps == 2 * 100 * 120 * 4 + split.chunk
    assert split.features == 64 * 1024 ** 2 - split.maps


def test_a_small_budget_shrinks_the_chunk_to_a_quarter():
    img = Image.from_array(np.zeros((10, 10), np.float32))
    split = split_budget(img, GPConfig(memory_budget="400KB", chunk_bytes="256MB"))
    assert split.chunk == 400 * 1024 // 4


def test_maps_over_the_budget_are_refused_with_the_sizes():
    img = Image.from_array(np.zeros((200, 200), np.float32))
    with pytest.raises(MemoryBudgetError, match="over the memory budget of"):
        split_budget(img, GPConfig(memory_budget="100KB"))
