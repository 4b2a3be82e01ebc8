"""Segmentation losses: soft Dice + cross-entropy with an ignore label, and deep supervision.

Partially labelled data marks voxels that nobody annotated with -1; those voxels must not count as
background, so both terms exclude them (not just cross-entropy, as ``ignore_index`` alone would do).
Partially labelled cases (each annotates only some classes) get the marginal loss: the probabilities
of the classes a case does not annotate are merged into background before Dice + CE (its background
voxels may be any of them), plus an exclusion term (voxels of an annotated organ are certainly none of
the unannotated ones). Deep-supervision targets are downsampled here, on the loss's device, so data-loading workers never
have to build one label map per output resolution.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_LABEL = -1


def deep_supervision_weights(num_outputs: int) -> list[float]:
    """Weights halving per level, the lowest resolution left out (too coarse to help), summing to 1."""
    if num_outputs <= 1:
        return [1.0]
    w = [0.5 ** i for i in range(num_outputs)]
    w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


def downsample_target(target: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Nearest-neighbour label map (N, 1, *shape); exact strided picking keeps labels (and -1) intact."""
    if tuple(target.shape[2:]) == tuple(shape):
        return target
    return F.interpolate(target.float(), size=tuple(shape), mode="nearest").to(target.dtype)


def _as_index_target(target: torch.Tensor) -> torch.Tensor:
    if target.ndim >= 2 and target.shape[1] == 1:
        target = target[:, 0]
    return target.long()


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, batch_dice: bool = False,
                   smooth: float = 1e-5, include_background: bool = False,
                   class_weights: torch.Tensor | None = None, ignore_label: int = IGNORE_LABEL) -> torch.Tensor:
    """Negative mean soft Dice of softmax(logits) against integer ``target`` (N, [1,] *spatial)."""
    target = _as_index_target(target)
    probs = torch.softmax(logits.float(), 1)
    valid = target != ignore_label
    safe = torch.where(valid, target, torch.zeros_like(target))
    onehot = F.one_hot(safe, probs.shape[1]).movedim(-1, 1).to(probs.dtype)
    mask = valid.unsqueeze(1).to(probs.dtype)
    probs = probs * mask
    onehot = onehot * mask
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
        if class_weights is not None:
            class_weights = class_weights[1:]
    axes = tuple(range(2, probs.ndim))
    if batch_dice:
        axes = (0,) + axes
    inter = (probs * onehot).sum(axes)
    denom = probs.sum(axes) + onehot.sum(axes)
    dice = (2 * inter + smooth) / (denom + smooth).clamp_min(1e-8)
    if class_weights is not None:
        w = class_weights.to(dice.device, dice.dtype)
        dice = (dice * w).sum(-1) / w.sum().clamp_min(1e-8)
    return -dice.mean()


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, class_weights: torch.Tensor | None = None,
                         ignore_label: int = IGNORE_LABEL) -> torch.Tensor:
    """Cross-entropy averaged over annotated voxels (weighted mean when ``class_weights`` is given).

    A batch with no annotated voxel gives 0 with a gradient, never NaN.
    """
    target = _as_index_target(target)
    w = class_weights.to(logits.device, torch.float32) if class_weights is not None else None
    ce = F.cross_entropy(logits.float(), target, weight=w, ignore_index=ignore_label, reduction="none")
    valid = target != ignore_label
    if w is None:
        norm = valid.sum()
    else:
        norm = w[torch.where(valid, target, torch.zeros_like(target))][valid].sum()
    return ce.sum() / norm.clamp_min(1e-8)


def _annotated_mask(annotated: torch.Tensor, k: int, ndim: int) -> torch.Tensor:
    """(B, K) bool -> (B, K, 1, ...) bool broadcastable over the spatial axes; background always kept."""
    ann = annotated.to(torch.bool).clone()
    if ann.shape[1] != k:
        raise ValueError(f"annotated has {ann.shape[1]} classes, logits {k}")
    ann[:, 0] = True
    return ann.view(*ann.shape, *([1] * (ndim - 2)))


def marginal_log_probs(logits: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """log-softmax with each case's unannotated classes merged into background (channel 0 holds
    log(p_bg + sum of unannotated p)); unannotated channels are -inf (never a target there)."""
    logp = torch.log_softmax(logits.float(), 1)
    ann = _annotated_mask(annotated, logits.shape[1], logits.ndim)
    merge = ~ann
    merge[:, 0] = True
    neg_inf = torch.finfo(logp.dtype).min
    bg = torch.logsumexp(logp.masked_fill(~merge, neg_inf), 1, keepdim=True)
    out = logp.masked_fill(~ann, neg_inf)
    return torch.cat([bg, out[:, 1:]], 1)


def marginal_dice_ce(logits: torch.Tensor, target: torch.Tensor, annotated: torch.Tensor, batch_dice: bool = False,
                     smooth: float = 1e-5, class_weights: torch.Tensor | None = None,
                     ignore_label: int = IGNORE_LABEL, weight_ce: float = 1.0, weight_dice: float = 1.0,
                     weight_exclusion: float = 1.0) -> torch.Tensor:
    """Marginal Dice + CE (and exclusion) for cases annotating only the classes ``annotated`` (B, K) marks."""
    target = _as_index_target(target)
    valid = target != ignore_label
    safe = torch.where(valid, target, torch.zeros_like(target))
    logp = marginal_log_probs(logits, annotated)
    loss = logits.new_zeros((), dtype=torch.float32)
    w = class_weights.to(logits.device, torch.float32) if class_weights is not None else None
    if weight_ce:
        ce = F.nll_loss(logp, safe, weight=w, reduction="none") * valid
        norm = valid.sum() if w is None else (w[safe] * valid).sum()
        loss = loss + weight_ce * ce.sum() / norm.clamp_min(1e-8)
    ann = _annotated_mask(annotated, logits.shape[1], logits.ndim)
    probs = logp.exp() * valid.unsqueeze(1)
    onehot = F.one_hot(safe, logits.shape[1]).movedim(-1, 1).to(probs.dtype) * valid.unsqueeze(1)
    axes = tuple(range(2, probs.ndim)) if not batch_dice else (0, *range(2, probs.ndim))
    keep = ann[:, 1:].flatten(2).any(-1)
    if batch_dice:
        keep = keep.any(0)
    if weight_dice and bool(keep.any()):
        p, o = probs[:, 1:], onehot[:, 1:]
        dice = (2 * (p * o).sum(axes) + smooth) / (p.sum(axes) + o.sum(axes) + smooth).clamp_min(1e-8)
        cw = keep.to(dice.dtype) * (w[1:] if w is not None else 1.0)
        loss = loss - weight_dice * (dice * cw).sum() / cw.sum().clamp_min(1e-8)
    unann = ~ann[:, 1:].flatten(2).any(-1)
    if weight_exclusion and bool(unann.any()):
        sure = ((safe > 0) & valid).unsqueeze(1).to(probs.dtype)  # voxels of an annotated organ
        p_all = torch.softmax(logits.float(), 1)[:, 1:] * valid.unsqueeze(1)
        sp = tuple(range(2, p_all.ndim))
        overlap = (2 * (p_all * sure).sum(sp)) / (p_all.sum(sp) + sure.sum(sp) + smooth)
        loss = loss + weight_exclusion * (overlap * unann).sum() / unann.sum()
    return loss


class DiceCELoss(nn.Module):
    """``weight_ce * CE + weight_dice * (soft Dice loss)``, both blind to ``ignore_label`` voxels.

    ``class_weights`` (one per output channel, background included) may be replaced between steps;
    the dynamic-weight tumour trainer does exactly that.
    """

    def __init__(self, batch_dice: bool = False, weight_ce: float = 1.0, weight_dice: float = 1.0,
                 smooth: float = 1e-5, ignore_label: int = IGNORE_LABEL,
                 class_weights: torch.Tensor | None = None, weight_exclusion: float = 1.0) -> None:
        super().__init__()
        self.weight_exclusion = weight_exclusion
        self.batch_dice = batch_dice
        self.weight_ce = weight_ce
        self.weight_dice = weight_dice
        self.smooth = smooth
        self.ignore_label = ignore_label
        self.class_weights = class_weights

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                annotated: torch.Tensor | None = None) -> torch.Tensor:
        """``annotated`` (B, K) bool: classes each case annotates; None = all (the plain loss)."""
        if annotated is not None and not bool(annotated[:, 1:].all()):
            return marginal_dice_ce(logits, target, annotated, self.batch_dice, self.smooth, self.class_weights,
                                    self.ignore_label, self.weight_ce, self.weight_dice, self.weight_exclusion)
        loss = logits.new_zeros((), dtype=torch.float32)
        if self.weight_ce:
            loss = loss + self.weight_ce * masked_cross_entropy(logits, target, self.class_weights,
                                                                self.ignore_label)
        if self.weight_dice:
            loss = loss + self.weight_dice * soft_dice_loss(logits, target, self.batch_dice, self.smooth,
                                                            class_weights=self.class_weights,
                                                            ignore_label=self.ignore_label)
        return loss


class DeepSupervisionLoss(nn.Module):
    """Weighted sum of ``loss`` over the network's outputs, each against a target downsampled to it.

    Outputs with weight 0 cost no loss computation; they enter as ``0 * sum`` only so that every
    parameter takes part in the graph (DistributedDataParallel requires it).
    """

    def __init__(self, loss: nn.Module, weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.weights = list(weights) if weights is not None else None

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor,
                **kwargs: torch.Tensor) -> torch.Tensor:
        """``kwargs`` (e.g. ``annotated``) go to the per-output loss unchanged."""
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target, **kwargs)
        weights = self.weights or deep_supervision_weights(len(outputs))
        if len(weights) < len(outputs):
            raise ValueError(f"{len(outputs)} deep-supervision outputs but only {len(weights)} weights")
        total = None
        for out, w in zip(outputs, weights):
            if w == 0:
                term = out.sum() * 0.0
            else:
                term = w * self.loss(out, downsample_target(target, out.shape[2:]), **kwargs)
            total = term if total is None else total + term
        return total


def pseudo_dice_counts(logits: torch.Tensor, target: torch.Tensor, ignore_label: int = IGNORE_LABEL,
                       annotated: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per foreground class (tp, fp, fn) voxel counts of argmax(logits), summed over the batch
    (``annotated`` (B, K): a class counts only in the samples whose case annotates it).

    Summed over an epoch's validation batches they give the cheap "pseudo DSC" logged each epoch.
    """
    target = _as_index_target(target)
    pred = logits.argmax(1)
    valid = target != ignore_label
    k = logits.shape[1]
    tp, fp, fn = [], [], []
    for c in range(1, k):
        if annotated is not None:
            valid = (target != ignore_label) & annotated[:, c].to(torch.bool).view(-1, *[1] * (target.ndim - 1))
        p = (pred == c) & valid
        g = target == c
        tp.append((p & g).sum())
        fp.append((p & ~g).sum())
        fn.append((~p & g & valid).sum())
    return torch.stack(tp).cpu(), torch.stack(fp).cpu(), torch.stack(fn).cpu()
