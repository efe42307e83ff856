"""MixedLoss: weights, schedules, extra terms, the fused hidden path, and the README example."""

import losses_reference as R
import pytest
import torch
from losses_inputs import make_inputs

from distill.losses import (
    ForwardKL,
    HiddenStates,
    MixedLoss,
    ReverseKL,
    TopKTargets,
    linear_ramp,
)


def test_linear_ramp_by_hand():
    ramp = linear_ramp(0.0, 1.0, num_steps=10, begin=5)
    assert [ramp(s) for s in (0, 5, 10, 15, 100)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert linear_ramp(2.0, 0.0, 4)(1) == 1.5


@pytest.mark.parametrize("path", ["logits", "hidden"])
def test_total_and_parts_match_the_references(path):
    x = make_inputs(seed=11)
    teacher = TopKTargets(x["ids"], x["logprobs"])
    logits = x["hidden"] @ x["weight"].T
    student = logits if path == "logits" else HiddenStates(x["hidden"], x["weight"])
    balance = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    loss = MixedLoss(ReverseKL(temperature=2.0, chunk_size=3), ce_weight=lambda s: 0.1 * s,
                     kd_weight=linear_ramp(0.0, 1.0, 10))
    out = loss(student, teacher, x["labels"], step=4, extra={"moe_balance": (balance, 0.01)})

    ce = R.cross_entropy(logits, x["labels"])
    kd = R.kd_loss("reverse_kl", logits, (x["ids"], x["logprobs"]), x["labels"], 2.0, "bucket")
    torch.testing.assert_close(out.total, 0.4 * ce + 0.4 * kd + 0.01 * 0.7)
    torch.testing.assert_close(out.parts["ce"], ce)
    torch.testing.assert_close(out.parts["kd"], kd)
    assert out.weights == {"ce": 0.4, "kd": 0.4, "moe_balance": 0.01}
    assert not out.parts["kd"].requires_grad
    out.total.backward()
    assert balance.grad.item() == pytest.approx(0.01)


def test_fused_gradients_equal_separate_losses():
    x = make_inputs(seed=12, dtype=torch.float32)
    h1, h2 = (x["hidden"].clone().requires_grad_() for _ in range(2))
    kd = ForwardKL(temperature=1.5, chunk_size=2)
    out = MixedLoss(kd, ce_weight=0.3, kd_weight=0.7)(
        HiddenStates(h1, x["weight"]), x["teacher_logits"].float(), x["labels"])
    out.total.backward()
    logits = h2 @ x["weight"].T
    separate = (0.3 * torch.nn.functional.cross_entropy(logits, x["labels"])
                + 0.7 * kd(logits, x["teacher_logits"].float(), x["labels"]))
    separate.backward()
    torch.testing.assert_close(out.total, separate)
    torch.testing.assert_close(h1.grad, h2.grad)


def test_scheduled_weight_needs_a_step():
    x = make_inputs(seed=13)
    loss = MixedLoss(ForwardKL(), kd_weight=linear_ramp(0.0, 1.0, 10))
    with pytest.raises(ValueError, match="step"):
        loss(x["student_logits"], x["teacher_logits"], x["labels"])


def test_readme_example_runs(capsys):
    # --- the snippet from the report, verbatim ---
    import torch

    from distill.losses import ForwardKL, HiddenStates, MixedLoss, TopKTargets, linear_ramp

    body, lm_head = torch.nn.Linear(64, 64), torch.nn.Linear(64, 1000, bias=False)
    lm_head.weight.requires_grad_(False)  # frozen head: no [V, H] gradient is ever allocated
    opt = torch.optim.AdamW(body.parameters(), lr=1e-3)
    loss_fn = MixedLoss(ForwardKL(temperature=2.0), kd_weight=linear_ramp(0.0, 1.0, 100))
    for step in range(3):
        x, labels = torch.randn(8, 64), torch.randint(0, 1000, (8,))
        top = torch.randn(8, 1000).log_softmax(-1).topk(16)  # stands in for a cached teacher
        out = loss_fn(HiddenStates(body(x), lm_head.weight), TopKTargets(top.indices, top.values),
                      labels, step=step)
        out.total.backward(); opt.step(); opt.zero_grad()  # noqa: E702
        print(step, {name: round(v.item(), 3) for name, v in out.parts.items()})
    # --- end of snippet ---
    assert capsys.readouterr().out.count("'kd'") == 3
