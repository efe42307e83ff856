"""The hidden-state path: memory behaviour, low precision, and dropped rows."""

import subprocess
import sys
from pathlib import Path

import losses_reference as R
import pytest
import torch
from losses_inputs import make_inputs
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from distill.losses import HiddenStates, TopKTargets, lm_head
from distill.losses import functional as LF


class LargeAllocations(TorchDispatchMode):
    """Records every op that returns a new tensor of at least `nbytes` (views excluded)."""

    def __init__(self, nbytes, existing):
        super().__init__()
        self.nbytes = nbytes
        self.existing = {t.untyped_storage().data_ptr() for t in existing}
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                if storage.nbytes() >= self.nbytes and storage.data_ptr() not in self.existing:
                    self.ops.append(str(func))
        return out


@pytest.mark.parametrize("weight_requires_grad", [False, True])
def test_no_weight_gradient_buffer_for_a_frozen_lm_head(weight_requires_grad):
    x = make_inputs(seed=5, dtype=torch.float32, n=10, vocab=64, hidden=48, k=8)
    hidden = x["hidden"].requires_grad_()
    weight = x["weight"].requires_grad_(weight_requires_grad)
    teacher = TopKTargets(x["ids"], x["logprobs"])
    with LargeAllocations(weight.numel() * weight.element_size(), [weight]) as mode:
        loss = LF.forward_kl(HiddenStates(hidden, weight), teacher, x["labels"], chunk_size=4)
        loss.backward()
    assert hidden.grad is not None
    # The positive case proves the detector sees a [V, H] buffer when one is allocated.
    assert bool(mode.ops) == weight_requires_grad, mode.ops


def test_ignored_rows_are_never_computed():
    x = make_inputs(seed=6)
    hidden = x["hidden"].clone()
    hidden[x["labels"] == -100] = float("nan")  # would poison any logit computed from them
    hidden.requires_grad_()
    teacher = TopKTargets(x["ids"], x["logprobs"])
    loss = LF.reverse_kl(HiddenStates(hidden, x["weight"]), teacher, x["labels"], chunk_size=2)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(hidden.grad[x["labels"] == -100] == 0)
    assert torch.isfinite(hidden.grad).all()


@pytest.mark.parametrize("tail", ["renorm", "bucket"])
def test_bf16_under_autocast_accumulates_in_fp32(tail, monkeypatch):
    # A CPU without bf16 tiles: the weight is upcast, in small blocks so that the vocab is
    # processed in several fp32 blocks.
    monkeypatch.setattr(lm_head, "cpu_has_bf16_tiles", lambda: False)
    monkeypatch.setattr(lm_head, "UPCAST_BLOCK_ROWS", 3)
    x = make_inputs(seed=7, dtype=torch.float32, n=9, vocab=10, hidden=6)
    hidden = x["hidden"].bfloat16().requires_grad_()
    weight = x["weight"].bfloat16().requires_grad_()
    teacher = TopKTargets(x["ids"], x["logprobs"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = LF.forward_kl(HiddenStates(hidden, weight), teacher, x["labels"], tail=tail,
                             temperature=2.0, chunk_size=4)
    loss.backward()
    assert loss.dtype == torch.float32
    assert hidden.grad.dtype == torch.bfloat16 and weight.grad.dtype == torch.bfloat16

    h64, w64 = (t.detach().double().requires_grad_() for t in (hidden, weight))
    ids, logprobs = x["ids"], x["logprobs"].double()
    want = R.kd_loss("forward_kl", h64 @ w64.T, (ids, logprobs), x["labels"], 2.0, tail)
    want.backward()
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden.grad.double(), h64.grad, rtol=2e-2, atol=1e-3)
    torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=2e-2, atol=1e-3)


@pytest.mark.parametrize("tail", ["renorm", "bucket"])
def test_bf16_on_a_cpu_with_bf16_tiles_matmuls_in_bf16(tail, monkeypatch):
    """As on a GPU: bf16 logits (fp32 accumulation inside the GEMM), softmax and loss in fp32.
    The loss matches float64 on the bf16-rounded logits to 1e-5; the gradients match the exact
    float64 ones to bf16's precision (the upcast path would miss the first check)."""
    monkeypatch.setattr(lm_head, "cpu_has_bf16_tiles", lambda: True)
    x = make_inputs(seed=7, dtype=torch.float32, n=9, vocab=10, hidden=6)
    hidden = x["hidden"].bfloat16().requires_grad_()
    weight = x["weight"].bfloat16().requires_grad_()
    assert lm_head.matmul_dtype(weight) == torch.bfloat16
    teacher = TopKTargets(x["ids"], x["logprobs"])
    loss = LF.forward_kl(HiddenStates(hidden, weight), teacher, x["labels"], tail=tail,
                         temperature=2.0, chunk_size=4)
    loss.backward()
    assert loss.dtype == torch.float32 and hidden.grad.dtype == torch.bfloat16

    h64, w64 = (t.detach().double().requires_grad_() for t in (hidden, weight))
    logits = (h64 @ w64.T).bfloat16().double()  # what the bf16 GEMM hands back
    want = R.kd_loss("forward_kl", logits, (x["ids"], x["logprobs"].double()), x["labels"], 2.0,
                     tail)
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)
    exact = R.kd_loss("forward_kl", h64 @ w64.T, (x["ids"], x["logprobs"].double()),
                      x["labels"], 2.0, tail)
    exact.backward()
    torch.testing.assert_close(hidden.grad.double(), h64.grad, rtol=3e-2, atol=2e-3)
    torch.testing.assert_close(weight.grad.double(), w64.grad, rtol=3e-2, atol=2e-3)


def test_leading_dimensions_are_flattened():
    x = make_inputs(seed=8, n=6)
    teacher = TopKTargets(x["ids"].view(2, 3, -1), x["logprobs"].view(2, 3, -1))
    hidden = x["hidden"].view(2, 3, -1).requires_grad_()
    loss = LF.forward_kl(HiddenStates(hidden, x["weight"]), teacher, x["labels"].view(2, 3))
    loss.backward()
    assert hidden.grad.shape == (2, 3, x["hidden"].shape[1])
    flat = LF.forward_kl(x["hidden"] @ x["weight"].T, TopKTargets(x["ids"], x["logprobs"]),
                         x["labels"])
    torch.testing.assert_close(loss, flat)


def test_no_grad_evaluation_allocates_no_gradients():
    x = make_inputs(seed=9)
    with torch.no_grad():
        loss = LF.forward_kl(HiddenStates(x["hidden"], x["weight"]), x["teacher_logits"],
                             x["labels"])
    torch.testing.assert_close(loss, LF.forward_kl(x["hidden"] @ x["weight"].T,
                                                   x["teacher_logits"], x["labels"]))


def test_import_needs_torch_only():
    root = Path(__file__).resolve().parents[2]
    code = ("import sys; sys.modules['numpy'] = None; sys.modules['transformers'] = None; "
            "import distill.losses")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root,
                   env={"PYTHONPATH": str(root), "PATH": ""})


def test_a_repeated_backward_gives_the_same_gradient():
    # The bucket student path reuses its scratch buffer as the gradient on the first backward.
    x = make_inputs(seed=10)
    logits = x["student_logits"].clone().requires_grad_()
    loss = LF.forward_kl(logits, TopKTargets(x["ids"], x["logprobs"]), x["labels"], tail="bucket")
    first = torch.autograd.grad(loss, logits, retain_graph=True)[0]
    second = torch.autograd.grad(loss, logits)[0]
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_num_items_may_be_a_float_or_tensor():
    # Trainers divide a global token count by the number of processes: not always an int.
    x = make_inputs(seed=11)
    teacher = TopKTargets(x["ids"], x["logprobs"])
    plain = LF.forward_kl(x["student_logits"], teacher, x["labels"])
    n_valid = int((x["labels"] != -100).sum())
    for num_items in (2.5, torch.tensor(2.5, dtype=torch.float64)):
        scaled = LF.forward_kl(x["student_logits"], teacher, x["labels"], num_items=num_items)
        torch.testing.assert_close(scaled, plain * n_valid / 2.5)
