"""Dice + CE with ignore label, deep supervision weighting and target downsampling, pseudo Dice."""
import pytest
import torch

from autoseg.losses import (DeepSupervisionLoss, DiceCELoss, deep_supervision_weights, downsample_target,
                            masked_cross_entropy, pseudo_dice_counts, soft_dice_loss)


def _data(seed=0, k=3, shape=(2, 8, 8, 8)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(shape[0], k, *shape[1:], generator=g)
    target = torch.randint(0, k, (shape[0], 1, *shape[1:]), generator=g).to(torch.int8)
    return logits, target


def test_ignored_voxels_do_not_affect_loss_or_gradient():
    logits, target = _data()
    target[:, :, :4] = -1
    loss_fn = DiceCELoss()
    a = logits.clone().requires_grad_(True)
    la = loss_fn(a, target)
    la.backward()
    b = logits.clone()
    b[:, :, :4] = torch.randn_like(b[:, :, :4]) * 10  # change predictions only where unannotated
    lb = loss_fn(b, target)
    assert torch.isclose(la, lb, atol=1e-6)
    assert torch.all(a.grad[:, :, :4] == 0) and a.grad[:, :, 4:].abs().sum() > 0


def test_all_ignored_batch_is_finite_and_perfect_prediction_scores_best():
    logits, target = _data()
    assert masked_cross_entropy(logits, torch.full_like(target, -1)).item() == 0.0
    perfect = torch.nn.functional.one_hot(target[:, 0].long(), 3).movedim(-1, 1).float() * 50
    assert soft_dice_loss(perfect, target).item() == pytest.approx(-1.0, abs=1e-4)
    assert DiceCELoss()(perfect, target).item() < DiceCELoss()(logits, target).item()


def test_batch_dice_and_class_weights():
    logits, target = _data(1)
    assert soft_dice_loss(logits, target, batch_dice=True).item() != soft_dice_loss(logits, target).item()
    w = torch.tensor([1.0, 1.0, 5.0])
    ce_w = masked_cross_entropy(logits, target, w)
    ref = torch.nn.functional.cross_entropy(logits, target[:, 0].long(), weight=w)
    assert torch.isclose(ce_w, ref, atol=1e-5)


def test_deep_supervision_weights_and_targets():
    assert deep_supervision_weights(1) == [1.0]
    w = deep_supervision_weights(4)
    assert w == pytest.approx([4 / 7, 2 / 7, 1 / 7, 0.0])
    target = torch.zeros(1, 1, 8, 8, 8, dtype=torch.int8)
    target[..., 2:6, 2:6, 2:6] = 2
    target[..., 0, 0, 0] = -1
    small = downsample_target(target, (4, 4, 4))
    assert small.dtype == torch.int8 and set(small.unique().tolist()) <= {-1, 0, 2}
    assert small[0, 0, 0, 0, 0] == -1 and small[0, 0, 1:3, 1:3, 1:3].eq(2).all()


def test_deep_supervision_loss_uses_every_output_for_the_graph():
    g = torch.Generator().manual_seed(0)
    outs = [torch.randn(2, 3, *s, generator=g, requires_grad=True) for s in ((8, 8, 8), (4, 4, 4), (2, 2, 2))]
    target = torch.randint(0, 3, (2, 1, 8, 8, 8), generator=g)
    loss = DeepSupervisionLoss(DiceCELoss())(outs, target)
    loss.backward()
    assert outs[0].grad.abs().sum() > 0 and outs[1].grad.abs().sum() > 0
    assert outs[2].grad is not None and outs[2].grad.abs().sum() == 0  # weight 0, yet in the graph (DDP)
    single = DeepSupervisionLoss(DiceCELoss())(outs[0].detach(), target)
    assert torch.isclose(single, DiceCELoss()(outs[0].detach(), target))


def test_pseudo_dice_counts():
    target = torch.tensor([[[[[0, 1, 1, 2, -1]]]]])
    logits = torch.nn.functional.one_hot(torch.tensor([[[[0, 1, 2, 2, 1]]]]), 3).movedim(-1, 1).float()
    tp, fp, fn = pseudo_dice_counts(logits, target)
    assert tp.tolist() == [1, 1] and fp.tolist() == [0, 1] and fn.tolist() == [1, 0]
