"""Distillation of a merged network from its original on unlabelled images (``--distill``)."""
from __future__ import annotations

import copy

import pytest
import torch

from ifm import build_groups, chain_spaces, iterative_feature_merging, slim_model
from ifm.distill import augmented, distill, distillation_loss
from ifm.experiments.planted import copy_channel
from tests.helpers import plain_cnn


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_a_merge_that_keeps_the_function_is_left_unchanged():
    torch.manual_seed(0)
    teacher = plain_cnn(widths=(6, 8, 5)).eval()
    sd = teacher.state_dict()
    groups = build_groups(sd, chain_spaces(sd))
    for group in groups[:2]:  # exact duplicates (rows and columns): the official rule keeps the function
        copy_channel(sd, group, 0, group.width - 1)
    teacher.load_state_dict(sd)
    merged = iterative_feature_merging(sd, groups, beta=1e-9, device="cpu")
    assert merged.n_merges == 2
    student = slim_model(teacher, merged.state_dict)
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    before = _outputs(student, x)
    torch.testing.assert_close(before, _outputs(teacher, x), rtol=1e-5, atol=1e-5)
    done = distill(student, teacher, torch.randn(32, 3, 8, 8), steps=20)
    assert done.final_loss < 1e-8 and done.steps == 20 and done.images == 32
    torch.testing.assert_close(_outputs(student, x), before, rtol=1e-5, atol=1e-5)


def test_a_damaged_student_recovers_toward_its_teacher_on_held_out_inputs():
    torch.manual_seed(0)
    teacher = plain_cnn(widths=(8, 8, 8), num_classes=5).eval()
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.3 * p.abs().mean() * torch.randn_like(p))
    train = torch.randn(256, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    held_out = torch.randn(256, 3, 8, 8, generator=torch.Generator().manual_seed(3))

    def gap(model):
        return distillation_loss(_outputs(model, held_out), _outputs(teacher, held_out)).item()
    before = gap(student)
    done = distill(student, teacher, train, steps=300, lr=0.05)
    assert done.final_loss < 0.5 * done.start_loss  # the loss falls
    assert gap(student) < 0.5 * before  # and the student moves toward its teacher where it was not trained
    agree = (_outputs(student, held_out).argmax(1) == _outputs(teacher, held_out).argmax(1)).float().mean()
    assert agree > 0.8


def test_augmentation_crops_and_flips_each_image_alone_and_is_seeded():
    batch = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    a = augmented(batch, torch.Generator().manual_seed(0))
    b = augmented(batch, torch.Generator().manual_seed(0))
    assert a.shape == batch.shape and torch.equal(a, b)
    with torch.no_grad():  # without shift room, only flips can happen: each image is itself or its mirror
        c = augmented(batch, torch.Generator().manual_seed(1), pad=0)
    assert all(torch.equal(c[k], batch[k]) or torch.equal(c[k], batch[k].flip(-1)) for k in range(2))


def test_bad_distillations_are_refused():
    teacher = plain_cnn()
    with pytest.raises(ValueError, match="0 or more"):
        distill(copy.deepcopy(teacher), teacher, torch.randn(4, 3, 8, 8), steps=-1)
    with pytest.raises(ValueError, match="needs images"):
        distill(copy.deepcopy(teacher), teacher, torch.zeros(0, 3, 8, 8), steps=5)
