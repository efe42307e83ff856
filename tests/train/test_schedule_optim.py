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


class TwoParts(torch.nn.Module):
    """Named like SalmonnStudent: an audio path (qformer., projection.) and an LLM (llm.)."""

    def __init__(self):
        super().__init__()
        self.qformer = torch.nn.Linear(3, 3)
        self.projection = torch.nn.Linear(3, 3)
        self.llm = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.llm(self.projection(self.qformer(x)))


def _train_cfg(**optimizer):
    return TrainConfig(max_steps=20, schedule={"kind": "cosine", "warmup_steps": 4},
                       optimizer={"lr": 1e-3, "min_lr": 1e-4, "warmup_start_lr": 1e-5,
                                  **optimizer})


def _lrs_by_step(model, cfg, steps):
    optimizer = build_optimizer(model, cfg.optimizer)
    scheduler = build_scheduler(optimizer, cfg, total_steps=cfg.max_steps)
    seen = []
    for _ in range(steps):
        seen.append({g["component"]: g["lr"] for g in optimizer.param_groups})
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        scheduler.step()
    return optimizer, seen


def test_audio_path_gets_its_own_peak_lr_with_the_same_shape():
    cfg = _train_cfg(audio_lr=5e-3)
    optimizer, seen = _lrs_by_step(TwoParts(), cfg, 21)
    components = sorted({(g["component"], g["weight_decay"]) for g in optimizer.param_groups})
    assert components == [("audio", 0.0), ("audio", 0.05), ("llm", 0.0), ("llm", 0.05)]
    ref = dict(lr=1e-3, min_lr=1e-4, warmup_start_lr=1e-5, warmup_steps=4, total_steps=20)
    for step in (0, 2, 4, 12, 20):
        assert seen[step]["llm"] == pytest.approx(lr_at(step, **ref))
        assert seen[step]["audio"] == pytest.approx(5 * lr_at(step, **ref))
    assert seen[4]["audio"] == pytest.approx(5e-3) and seen[20]["audio"] == pytest.approx(5e-4)


def test_llm_frozen_before_its_start_step_then_its_own_schedule():
    cfg = _train_cfg(llm_start_step=8)
    model = TwoParts()
    before = model.llm.weight.detach().clone()
    audio_before = model.qformer.weight.detach().clone()
    optimizer, seen = _lrs_by_step(model, cfg, 8)  # steps 0..7: the LLM must not move
    assert torch.equal(model.llm.weight, before)
    assert not torch.equal(model.qformer.weight, audio_before)
    assert all(s["llm"] == 0.0 for s in seen)
    assert seen[4]["audio"] == pytest.approx(1e-3)  # the audio path warms up from step 0
    _, seen = _lrs_by_step(TwoParts(), cfg, 21)
    # By hand: from step 8 the LLM warms up over 4 steps from 1e-5, peaks at 12, floor at 20.
    assert seen[8]["llm"] == pytest.approx(1e-5)
    assert seen[10]["llm"] == pytest.approx((1e-5 + 1e-3) / 2)
    assert seen[12]["llm"] == pytest.approx(1e-3)
    assert seen[16]["llm"] == pytest.approx((1e-3 + 1e-4) / 2)  # cosine midpoint of 12..20
    assert seen[20]["llm"] == pytest.approx(1e-4)


def test_llm_start_at_or_after_the_end_is_refused():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"llm_start_step \(20\) must be below max_steps"):
        _train_cfg(llm_start_step=20)
