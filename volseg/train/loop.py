"""The training loop: backbone -> embeddings -> GP posterior from simulated clicks -> loss -> step.

Per image, clicks are simulated as in RITM: random initial clicks, then up to ``iterative`` clicks
each placed on the current posterior's largest error.  The loss is taken after every click
(the GP is cheap next to the network, so every click's mask trains the embedding), plus a small
term on the prior-mean head alone so the first click starts from an object-shaped prior.

Outputs in ``out``: ``last.ckpt`` (with optimizer state, for ``--resume``), ``model.ckpt`` (weights
only, what ``--features`` takes), ``log.csv`` (and TensorBoard events when ``log.tensorboard`` is
set and tensorboard is installed).  Under ``torchrun`` (WORLD_SIZE > 1) every rank trains on its
own samples with DistributedDataParallel and rank 0 writes the files.
"""
from __future__ import annotations

import copy
import csv
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..features import get_extractor
from ..features.backbones import Backbone, backbone_from_checkpoint, read_checkpoint, rgb_of_input, save_checkpoint
from ..features.stack import scaled_part
from ..gp.differentiable import GPHyper, gp_inputs, posterior
from ..gp.likelihood import probit
from ..image import Image
from ..robot import ritm_click
from .config import load_config
from .data import TrainingData
from .decontaminate import check_no_overlap
from .losses import bce, segmentation_loss
from .simulate import initial_clicks


class Trainee(torch.nn.Module):
    """Everything with parameters in one module, so DistributedDataParallel syncs all of it."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.backbone = Backbone(cfg["model"])
        g = cfg["gp"]
        self.hyper = GPHyper(float(g["feature_lengthscale"]), float(g["spatial_fraction"]), float(g["outputscale"]),
                             float(g["noise"]), learn=bool(g.get("learn", True)))

    def forward(self, x: torch.Tensor):
        return self.backbone(x)


def _load_weights(model: Trainee, ckpt: dict, path: str | Path, manifest: str, verb: str) -> None:
    """The backbone of a checkpoint (read_checkpoint) into ``model``: the same data and the same network,
    or an error naming the file (``verb``: "resume from", "start from")."""
    if ckpt.get("manifest_sha256") and ckpt["manifest_sha256"] != manifest:
        raise InputError(f"cannot {verb} {path}: it was trained on different data (manifest hash differs)")
    loaded = backbone_from_checkpoint(ckpt, path)
    try:
        model.backbone.load_state_dict(loaded.state_dict())
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise InputError(f"cannot {verb} {path}: its network differs from this config's model ({first})") from None


def _initialise(model: Trainee, ckpt: dict, path: str | Path, manifest: str) -> dict:
    """Start from a finished checkpoint: its weights and learned GP settings; returns the metrics to
    carry, so the new checkpoint records what it grew from."""
    _load_weights(model, ckpt, path, manifest, "start from")
    g = ckpt["gp_config"]
    with torch.no_grad():
        for name in ("feature_lengthscale", "spatial_fraction", "outputscale"):
            getattr(model.hyper, f"log_{name}").fill_(math.log(float(g[name])))
    before = ckpt.get("metrics", {})
    return {"initialised_from": {"path": str(path), "steps": before.get("steps"),
                                 "wall_seconds": before.get("wall_seconds"),
                                 "images_seen": before.get("images_seen")}}


def _dist(device: str = "cpu") -> tuple[int, int]:
    """(rank, world size) under torchrun; the backend follows the config's device, not the machine: CPU
    ranks on a GPU machine (its many cores) need gloo, which NCCL cannot stand in for."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def stacked_features(x: np.ndarray, cfg: dict) -> torch.Tensor | None:
    """The fixed feature columns a stacked kernel adds to the network's (``model.stack``), for one
    network input ``x`` (C, *spatial): each extractor's standardised features over sqrt(D), i.e. at
    lengthscale 1, exactly as ``--features CKPT+filterbank`` scales them at inference."""
    names = cfg["model"].get("stack") or []
    if not names:
        return None
    image = Image(rgb_of_input(x))
    blocks = []
    for name in names:
        f = scaled_part(np.asarray(get_extractor(name).features(image), np.float32))
        blocks.append(f.reshape(-1, f.shape[-1]))
    return torch.from_numpy(np.concatenate(blocks, axis=1))


def simulate_and_score(emb: torch.Tensor, m0: torch.Tensor, obj: np.ndarray, hyper: GPHyper, cfg: dict,
                       rng: np.random.Generator, spacing=None, *, n_iterative: int | None = None,
                       with_loss: bool = True, stacked: torch.Tensor | None = None) -> tuple[torch.Tensor, list[float]]:
    """Loss summed over the click sequence of one image, and the IoU after each click.

    emb (D, *spatial), m0 (*spatial), obj bool (*spatial); ``stacked`` (prod(spatial), D_s): fixed
    features of a stacked kernel (:func:`stacked_features`), a product with the network's kernel."""
    c, lcfg = cfg["clicks"], cfg["loss"]
    shape = obj.shape
    z = gp_inputs(emb, hyper, spacing)
    if stacked is not None:
        z = torch.cat([stacked.to(z.device, z.dtype), z], dim=1)
    m = m0.reshape(-1)
    target = torch.as_tensor(obj.reshape(-1), dtype=emb.dtype, device=emb.device)
    points, labels = initial_clicks(obj, rng, max_positive=int(c["max_positive"]), max_negative=int(c["max_negative"]),
                                    deepest=float(c["deepest"]))
    if n_iterative is None:
        n_iterative = int(rng.integers(0, int(c["iterative"]) + 1))
    losses, ious = [], []
    for step in range(n_iterative + 1):
        idx = torch.as_tensor(np.ravel_multi_index(np.array(points).T, shape), device=emb.device)
        y = torch.as_tensor(labels, dtype=torch.float64, device=emb.device)
        mean, var = posterior(z[idx], y, m[idx], z, m, hyper.outputscale, hyper.noise)
        p = probit(mean, var)
        if with_loss:
            losses.append(segmentation_loss(p, target, kind=lcfg["kind"], dice_weight=float(lcfg["dice_weight"]),
                                            gamma=float(lcfg.get("gamma", 2.0))))
        pred = (mean.detach() > 0).reshape(shape).cpu().numpy()
        ious.append(float((pred & obj).sum() / max((pred | obj).sum(), 1)))
        if step == n_iterative:
            break
        clicked = np.zeros(shape, bool)
        clicked[tuple(np.array(points).T)] = True
        nxt = ritm_click(obj, pred, clicked=clicked)
        if nxt is None:
            break
        points.append(nxt.voxel()), labels.append(1.0 if nxt.positive else -1.0)
    if not with_loss:
        return torch.zeros(()), ious
    loss = torch.stack(losses).mean()
    if float(lcfg.get("prior_weight", 0)):
        loss = loss + float(lcfg["prior_weight"]) * bce(probit(m, torch.zeros_like(m)), target)
    return loss, ious


@torch.no_grad()
def validate(model: Trainee, data: TrainingData, cfg: dict, device, n_clicks: int = 5) -> dict:
    """Mean IoU after 1 and after ``n_clicks`` robot clicks on held-out images, at training resolution."""
    model.eval()
    rng = np.random.default_rng(12345)
    vcfg = copy.deepcopy(cfg)
    vcfg["clicks"].update(max_positive=1, max_negative=0, deepest=1.0)
    first, last = [], []
    for i in range(min(len(data), int(cfg["log"]["val_images"]))):
        x, obj = data.sample(i, rng)
        emb, m0 = model(torch.from_numpy(x)[None].to(device))
        _, ious = simulate_and_score(emb[0], m0[0], obj, model.hyper, vcfg, rng, n_iterative=n_clicks - 1,
                                     with_loss=False, stacked=stacked_features(x, cfg))
        first.append(ious[0])
        last.append(ious[-1])
    model.train()
    return {"val_iou_1": float(np.mean(first)) if first else None,
            f"val_iou_{n_clicks}": float(np.mean(last)) if last else None}


def _hardware(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch thread(s)"


def learning_rate_factor(step: int, steps: int, warmup: int) -> float:
    """The schedule at ``step`` (from 0) of ``steps``: linear warm-up, then cosine decay to 5%."""
    f = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return f * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(step / max(steps, 1), 1.0))))


def train(config: dict | str | Path, out: str | Path | None = None, *, resume: str | Path | None = None,
          max_steps: int | None = None, max_minutes: float | None = None, quiet: bool = False,
          exclude_like: list[str | Path] = (), init: str | Path | None = None) -> Path:
    """Train (or continue training) a backbone; returns the path of ``model.ckpt``.

    ``resume`` continues an interrupted run (its step, optimiser state and schedule); ``init`` starts a new
    run from a finished checkpoint's weights and GP settings with a fresh optimiser and schedule, i.e.
    more epochs with a warm restart. The two are exclusive.

    ``exclude_like``: folders of evaluation images; training refuses to start if any training image
    copies one of them (see volseg.train.decontaminate).
    """
    if resume and init:
        raise InputError("give --resume or --init, not both")
    cfg, base = load_config(config)
    torch.set_num_threads(int(cfg["threads"]))
    rank, world = _dist(str(cfg["device"]))
    device = torch.device(cfg["device"] if cfg["device"] != "cuda" else f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError("config asks for device cuda but CUDA is not available")
    out = Path(out or cfg["out"] or Path("runs") / cfg["name"])
    opt_cfg, log_cfg = cfg["optim"], cfg["log"]
    steps = int(max_steps or opt_cfg["steps"])
    minutes = max_minutes or opt_cfg.get("max_minutes")

    data = TrainingData(cfg["data"], cfg["model"], base)
    if exclude_like:
        if data.synthetic:
            raise InputError("--exclude-like checks image folders, but this config trains on synthetic data")
        check_no_overlap([p.image for p in data.all_pairs], exclude_like)
    val = TrainingData(cfg["data"], cfg["model"], base, validation=True) if not cfg["data"].get("synthetic") else \
        TrainingData({**cfg["data"], "augment": False}, cfg["model"], base, validation=True)
    model = Trainee(cfg).to(device)
    hyper_params = list(model.hyper.parameters())
    net_params = [p for n, p in model.named_parameters() if not n.startswith("hyper.")]
    optim = torch.optim.AdamW([{"params": net_params, "lr": float(opt_cfg["lr"])},
                               {"params": hyper_params, "lr": float(opt_cfg["hyper_lr"]), "weight_decay": 0.0}],
                              weight_decay=float(opt_cfg["weight_decay"]))
    start, elapsed_before, metrics = 0, 0.0, {}
    if resume:
        ckpt = read_checkpoint(resume)
        _load_weights(model, ckpt, resume, data.manifest, "resume from")
        if "hyper" in ckpt:
            model.hyper.load_state_dict(ckpt["hyper"])
        if "optimizer" in ckpt:
            optim.load_state_dict(ckpt["optimizer"])
        start, elapsed_before = int(ckpt.get("step", 0)), float(ckpt.get("wall_seconds", 0.0))
        metrics = ckpt.get("metrics", {})
    if init:
        metrics = _initialise(model, read_checkpoint(init), init, data.manifest)
    ddp = model
    if world > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    writer = log = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        new = not (out / "log.csv").exists()
        log = open(out / "log.csv", "a", newline="")
        fields = ["step", "loss", "iou_first", "iou_last", "feature_lengthscale", "spatial_fraction", "outputscale",
                  "lr", "seconds"]
        log_writer = csv.DictWriter(log, fieldnames=fields, extrasaction="ignore")
        if new:
            log_writer.writeheader()
        if log_cfg.get("tensorboard"):
            try:
                from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 -- optional (tensorboard)

                writer = SummaryWriter(str(out / "tensorboard"))
            except ImportError:
                writer = None

    def checkpoint(step: int, elapsed: float, final: bool = False) -> Path:
        m = {**metrics, "steps": step, "wall_seconds": round(elapsed, 1), "hardware": _hardware(device),
             "world_size": world, "images_seen": step * int(opt_cfg["batch_size"]) * world}
        if final and len(val):
            m.update(validate(model, val, cfg, device))
        gp_cfg = model.hyper.gp_config()
        extra = {"hyper": model.hyper.state_dict(), "optimizer": optim.state_dict(), "step": step,
                 "wall_seconds": elapsed}
        save_checkpoint(out / "last.ckpt", model.backbone, cfg, gp_cfg, manifest_sha256=data.manifest, metrics=m,
                        extra=extra)
        return save_checkpoint(out / "model.ckpt", model.backbone, cfg, gp_cfg, manifest_sha256=data.manifest,
                               metrics=m)

    t0 = time.perf_counter()
    B, warm = int(opt_cfg["batch_size"]), int(opt_cfg.get("warmup", 0))
    # from the config, not the optimiser: a resumed optimiser holds the last scheduled rates
    base_lrs = [float(opt_cfg["lr"]), float(opt_cfg["hyper_lr"])]
    run = {"loss": 0.0, "iou_first": 0.0, "iou_last": 0.0, "n": 0}
    step = start
    model.train()
    while step < steps:
        elapsed = elapsed_before + time.perf_counter() - t0
        if minutes and elapsed > 60.0 * float(minutes):
            break
        rng = np.random.default_rng([int(cfg["seed"]), rank, step])
        f = learning_rate_factor(step, steps, warm)
        for g, lr in zip(optim.param_groups, base_lrs):
            g["lr"] = lr * f
        batch = [data.sample(int(rng.integers(0, len(data))), rng) for _ in range(B)]
        x = torch.from_numpy(np.stack([b[0] for b in batch])).to(device)
        emb, m0 = ddp(x)
        losses = []
        for b, (xb, obj) in enumerate(batch):
            stacked = stacked_features(xb, cfg)
            loss, ious = simulate_and_score(emb[b], m0[b], obj, model.hyper, cfg, rng, stacked=stacked)
            losses.append(loss)
            run["iou_first"] += ious[0]
            run["iou_last"] += ious[-1]
            run["n"] += 1
        loss = torch.stack(losses).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optim.step()
        run["loss"] += loss.item() * B
        step += 1
        if rank == 0 and (step % int(log_cfg["every"]) == 0 or step == steps):
            n = max(run["n"], 1)
            row = {"step": step, "loss": round(run["loss"] / n, 5), "iou_first": round(run["iou_first"] / n, 4),
                   "iou_last": round(run["iou_last"] / n, 4), "lr": optim.param_groups[0]["lr"],
                   "seconds": round(elapsed_before + time.perf_counter() - t0, 1),
                   **{k: round(v, 5) for k, v in model.hyper.gp_config().items() if isinstance(v, float)}}
            log_writer.writerow(row)
            log.flush()
            if writer is not None:
                for k, v in row.items():
                    if k != "step":
                        writer.add_scalar(k, v, step)
            if not quiet:
                print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
            metrics.update(train_loss=row["loss"], train_iou_first=row["iou_first"], train_iou_last=row["iou_last"])
            run = {"loss": 0.0, "iou_first": 0.0, "iou_last": 0.0, "n": 0}
        if rank == 0 and step % int(log_cfg["checkpoint_every"]) == 0 and step < steps:
            checkpoint(step, elapsed_before + time.perf_counter() - t0)
        val_every = log_cfg.get("val_every")
        if rank == 0 and val_every and step % int(val_every) == 0 and len(val):
            metrics.update(validate(model, val, cfg, device))
            if not quiet:
                print(f"step={step} validation {metrics}", flush=True)
    path = out / "model.ckpt"
    if rank == 0:
        path = checkpoint(step, elapsed_before + time.perf_counter() - t0, final=True)
        log.close()
        if writer is not None:
            writer.close()
    if world > 1:
        torch.distributed.barrier()
        # the process group's threads must stop before the interpreter exits: left running, they abort a
        # rank at exit now and then ("terminate called without an active exception", SIGABRT)
        torch.distributed.destroy_process_group()
    return path


__all__ = ["Trainee", "simulate_and_score", "train", "validate"]
