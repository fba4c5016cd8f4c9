"""Losses on the GP posterior probability p = Phi(mean / sqrt(1 + var)) against a binary target.

``normalized_focal`` is RITM's NFL: the focal weights (1 - p_t)^gamma are renormalised to sum to
the number of pixels, so the loss scale does not shrink as the mask gets good.  Dice is the soft
Dice on p.  :func:`segmentation_loss` combines one of BCE/NFL with Dice, as configured.
"""
from __future__ import annotations

import torch

EPS = 1e-6


def bce(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = p.clamp(EPS, 1.0 - EPS)
    return -(target * torch.log(p) + (1.0 - target) * torch.log(1.0 - p)).mean()


def normalized_focal(p: torch.Tensor, target: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    p = p.clamp(EPS, 1.0 - EPS)
    pt = torch.where(target > 0.5, p, 1.0 - p)
    w = (1.0 - pt) ** gamma
    w = w / (w.sum().detach() + EPS) * w.numel()  # the normalisation is a constant, as in RITM
    return -(w * torch.log(pt)).mean()


def soft_dice(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inter = (p * target).sum()
    return 1.0 - (2.0 * inter + 1.0) / (p.sum() + target.sum() + 1.0)


def segmentation_loss(p: torch.Tensor, target: torch.Tensor, *, kind: str = "nfl", dice_weight: float = 1.0,
                      gamma: float = 2.0) -> torch.Tensor:
    if kind == "nfl":
        main = normalized_focal(p, target, gamma)
    elif kind == "bce":
        main = bce(p, target)
    else:
        raise ValueError(f"unknown loss {kind!r}: nfl or bce")
    return main + dice_weight * soft_dice(p, target) if dice_weight else main


__all__ = ["bce", "normalized_focal", "segmentation_loss", "soft_dice"]
