"""The lr schedule hits the reference system's numbers; decay skips biases, norms and 1-D params."""

import pytest
import torch

from distill.config import TrainConfig
from distill.train.optim import build_optimizer, parameter_groups
from distill.train.schedule import build_scheduler, lr_at

REF = dict(lr=3e-5, min_lr=1e-5, warmup_start_lr=1e-6, warmup_steps=3000, total_steps=13000)


def test_reference_schedule_points():
    assert lr_at(0, **REF) == pytest.approx(1e-6)
    assert lr_at(1500, **REF) == pytest.approx((1e-6 + 3e-5) / 2)
    assert lr_at(3000, **REF) == pytest.approx(3e-5)
    assert lr_at(8000, **REF) == pytest.approx(2e-5)  # cosine midpoint
    assert lr_at(13000, **REF) == pytest.approx(1e-5)
    assert lr_at(20000, **REF) == pytest.approx(1e-5)  # stays at the floor


def test_scheduler_drives_the_optimizer():
    model = torch.nn.Linear(4, 4)
    cfg = TrainConfig()
    optimizer = build_optimizer(model, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg, total_steps=13000)
    seen = []
    for _ in range(3001):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(1e-6) and seen[3000] == pytest.approx(3e-5)


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(4, 4)
        self.layer_norm = torch.nn.LayerNorm(4)
        self.scale = torch.nn.Parameter(torch.ones(4))
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_no_decay_on_biases_norms_and_vectors_and_frozen_params_left_out():
    model = Tiny()
    decay, no_decay = parameter_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(model.proj.weight)]
    expected = {id(model.proj.bias), id(model.layer_norm.weight), id(model.layer_norm.bias),
                id(model.scale)}
    assert {id(p) for p in no_decay["params"]} == expected


def test_a_model_without_trainable_parameters_is_refused():
    model = torch.nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(model, TrainConfig().optimizer)
