"""Stream the posterior over boxes of locations in chunks of bounded size.

The whole-volume posterior is never one tensor of inputs: each chunk builds its inputs, takes
its kernel row against the clicks, and writes mean and variance into preallocated maps.
"""
from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

import torch

from . import fused
from .inputs import InputMap
from .posterior import ExactPosterior, Workspace
from .reach import Box, box_size

# Locations per chunk: enough that a chunk's Python work (and its worker's wait for the GIL) is
# small next to its arithmetic, few enough that its buffers stay a few MB: smaller chunks pay the
# overhead, larger ones fall out of the cache.
CHUNK_LOCATIONS = 1 << 17
MIN_SHARED_CHUNK = 1 << 14  # smallest chunk the fused pass's threads share a region in


def bytes_per_location(input_dim: int, n_train: int, n_objects: int) -> int:
    # augmented z, kernel row, [mean | whitened row], var, all float32
    return 4 * (input_dim + 2 + 2 * max(n_train, 1) + n_objects + 1)


def slabs(box: Box, max_locations: int) -> Iterator[Box]:
    """Split a box along its leading axes into sub-boxes of at most ``max_locations`` locations."""
    sizes = [s.stop - s.start for s in box]
    total = 1
    for n in sizes:
        total *= n
    if total <= max_locations or not box:
        yield box
        return
    inner = total // sizes[0]
    if inner <= max_locations:
        step = max(1, max_locations // inner)
        for a in range(box[0].start, box[0].stop, step):
            yield (slice(a, min(a + step, box[0].stop)),) + tuple(box[1:])
    else:  # one leading-axis plane is already too big: split the next axis too
        for a in range(box[0].start, box[0].stop):
            for sub in slabs(tuple(box[1:]), max_locations):
                yield (slice(a, a + 1),) + sub


def evaluate_boxes(posterior: ExactPosterior, inputs: InputMap, prior_mean: Callable[[Box], torch.Tensor] | None,
                   boxes: list[Box], mean_out: torch.Tensor | None, var_out: torch.Tensor | None, *,
                   max_bytes: int) -> None:
    """Write the posterior mean (K, *box) and/or variance (*box) of each of several disjoint boxes into
    the output maps, chunk by chunk, the chunks shared among the CPU threads.  ``prior_mean(box)``
    gives the box's prior mean in C order (n, K), or one row (1, K) where it is the same everywhere.

    Where the compiled fused kernel applies (:mod:`volseg.gp.fused`: CPU, RBF or Matern) the chunks
    go to it in one call, whose own threads share them.  Elsewhere (CUDA, or without the
    extension) a chunk is a few torch products; on a CPU each worker thread then takes whole
    chunks and runs its torch ops single-threaded: one parallel region per op would make every op
    of every chunk wait for the slowest core, which on a machine busy with anything else is many
    times slower."""
    K = mean_out.shape[0] if mean_out is not None else 1
    inputs.ensure(boxes)
    cpu = inputs.device.type == "cpu"
    workers = max(1, torch.get_num_threads()) if cpu else 1
    if fused.applies(posterior, inputs, mean_out, var_out):
        _evaluate_fused(posterior, inputs, prior_mean, boxes, mean_out, var_out, workers, max_bytes)
        return
    parts = fused.multiscale_parts(posterior, inputs) if var_out is None and mean_out is not None else None
    if parts and all(fused.applies(p, i, mean_out) for p, i in parts):
        # the mask's mean in two fused RBF passes; the second adds its term to what the first wrote
        (long, long_inputs), (short, short_inputs) = parts
        _evaluate_fused(long, long_inputs, prior_mean, boxes, mean_out, None, workers, max_bytes)
        K = mean_out.shape[0]
        written = lambda b: mean_out[(slice(None),) + b].reshape(K, -1).T  # noqa: E731
        _evaluate_fused(short, short_inputs, written, boxes, mean_out, None, workers, max_bytes, per_location=True)
        return
    chunk = max(1, min(max_bytes // workers // bytes_per_location(inputs.dim, posterior.n, K), CHUNK_LOCATIONS))
    subs = [sub for box in boxes for sub in slabs(box, chunk)]
    if not subs:
        return
    subs.sort(key=box_size, reverse=True)  # largest first: the last chunks to finish are small ones
    workers = min(workers, len(subs))
    spare = queue.SimpleQueue()  # buffers reused from chunk to chunk
    for _ in range(workers):
        spare.put(Workspace(chunk, inputs.dim, posterior.n, K + posterior.n, inputs.dtype, inputs.device))

    def run(sub: Box) -> None:
        work = spare.get()
        try:
            _evaluate_chunk(posterior, inputs, prior_mean, sub, mean_out, var_out, work)
        finally:
            spare.put(work)

    if workers == 1:
        for sub in subs:
            run(sub)
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            for _ in pool.map(run, subs):
                pass
    finally:
        torch.set_num_threads(threads)


def _evaluate_fused(posterior, inputs, prior_mean, boxes: list[Box], mean_out, var_out, threads: int,
                    max_bytes: int, *, per_location: bool = False) -> None:
    """The fused pass over the boxes: chunks small enough that every thread has work to the end of a
    click (the extension's threads take them largest first, and taking one is cheap), in as few
    calls as the prior means' bytes allow.  ``prior_mean`` gives one row (1, K) where the prior mean is the
    same everywhere: the whole region is then one call."""
    K = mean_out.shape[0] if mean_out is not None else 1
    total = sum(box_size(b) for b in boxes)
    chunk = min(CHUNK_LOCATIONS, max(MIN_SHARED_CHUNK, total // (8 * threads)))
    subs = sorted((sub for box in boxes for sub in slabs(box, chunk)), key=box_size, reverse=True)
    if not subs:
        return
    if mean_out is None:
        fused.evaluate_region(posterior, inputs, subs, None, None, var_out, threads)
        return
    first = prior_mean(subs[0]).to(torch.float32)
    if first.shape[0] == 1 and not per_location:  # one row: the same prior mean everywhere, the region is one call
        fused.evaluate_region(posterior, inputs, subs, first, mean_out, var_out, threads)
        return
    budget = max(1, max_bytes // (4 * K))  # locations whose prior means one call may hold
    batch, rows, held = [subs[0]], [first], box_size(subs[0])
    for sub in subs[1:]:
        if held + box_size(sub) > budget:
            fused.evaluate_region(posterior, inputs, batch, torch.cat(rows), mean_out, var_out, threads)
            batch, rows, held = [], [], 0
        batch.append(sub)
        rows.append(prior_mean(sub).to(torch.float32).expand(box_size(sub), -1))
        held += box_size(sub)
    fused.evaluate_region(posterior, inputs, batch, torch.cat(rows), mean_out, var_out, threads)


def _evaluate_chunk(posterior, inputs, prior_mean, sub: Box, mean_out, var_out, work: Workspace) -> None:
    shape, n = tuple(s.stop - s.start for s in sub), box_size(sub)
    K = mean_out.shape[0] if mean_out is not None else 1
    z = inputs.box(sub, out=work.inputs(n, inputs.dim))
    m0 = prior_mean(sub) if mean_out is not None else z[:, :0]
    mean, var = posterior.mean_var(z, m0, with_mean=mean_out is not None, with_var=var_out is not None, work=work)
    if mean_out is not None:
        mean_out[(slice(None),) + sub] = mean.T.reshape(K, *shape).to(mean_out.dtype)
    if var_out is not None:
        var_out[sub] = var.reshape(shape).to(var_out.dtype)
