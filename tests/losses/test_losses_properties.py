"""Properties checked with hypothesis on small random inputs (max_examples kept modest)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from distill.losses import HiddenStates, TopKTargets
from distill.losses import functional as LF

FAST = settings(max_examples=25, deadline=None)
DIVERGENCES = ["forward_kl", "reverse_kl", "generalized_jsd", "total_variation",
               "skew_forward_kl", "skew_reverse_kl"]


@st.composite
def logits_pair(draw, scales=(0.1, 1.0, 5.0, 30.0), dtype=torch.float64):
    """(student, teacher) logits [n, v] with a drawn scale, from a drawn seed."""
    n, v = draw(st.integers(1, 5)), draw(st.integers(2, 12))
    scale = draw(st.sampled_from(scales))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return (scale * torch.randn(n, v, generator=g, dtype=dtype),
            scale * torch.randn(n, v, generator=g, dtype=dtype))


def full_topk(teacher_logits, seed):
    """k = V top-k teacher, ids in a random order."""
    logprobs = torch.log_softmax(teacher_logits, -1)
    g = torch.Generator().manual_seed(seed)
    ids = torch.argsort(torch.rand(logprobs.shape, generator=g), dim=-1)
    return TopKTargets(ids, logprobs.gather(-1, ids))


@FAST
@given(pair=logits_pair(), name=st.sampled_from(DIVERGENCES + ["uld"]),
       temperature=st.sampled_from([0.5, 1.0, 3.0]))
def test_nonnegative_and_zero_for_equal_inputs(pair, name, temperature):
    student, teacher = pair
    loss = getattr(LF, name)
    assert loss(student, teacher, temperature=temperature) >= -1e-12
    assert abs(loss(student, student, temperature=temperature)) < 1e-9
    k = max(1, student.shape[1] // 2)
    logp = torch.log_softmax(student, -1)
    top = logp.topk(k)
    # The rest as a cache stores it: summed over the other ids, not 1 - sum(kept), which loses
    # it entirely in float64 once the kept mass is within 1e-16 of 1 (e.g. logits 30 apart).
    rest = torch.logsumexp(logp.scatter(-1, top.indices, float("-inf")), -1)
    for tail in ("renorm", "bucket"):
        same = loss(student, TopKTargets(top.indices, top.values, rest), tail=tail,
                    temperature=temperature)
        assert abs(same) < 1e-9


@FAST
@given(pair=logits_pair(), beta=st.floats(0.01, 0.99))
def test_unscaled_jsd_is_at_most_ln2(pair, beta):
    student, teacher = pair
    scaled = LF.generalized_jsd(student, teacher, beta=beta)
    binary_entropy = -beta * math.log(beta) - (1 - beta) * math.log(1 - beta)
    assert beta * (1 - beta) * scaled <= binary_entropy + 1e-9 <= math.log(2) + 1e-9


def test_jsd_bound_is_tight_for_disjoint_supports():
    student = torch.tensor([[60.0, -60.0]], dtype=torch.float64)
    jsd = LF.generalized_jsd(student, -student, beta=0.5) / 4
    assert math.log(2) - 1e-9 < jsd <= math.log(2)


@FAST
@given(pair=logits_pair(scales=(0.1, 1.0)))  # the limit is approached slowly when q << p
def test_jsd_is_continuous_into_forward_and_reverse_kl(pair):
    student, teacher = pair
    forward = LF.forward_kl(student, teacher)
    reverse = LF.reverse_kl(student, teacher)
    torch.testing.assert_close(LF.generalized_jsd(student, teacher, beta=0.0), forward)
    torch.testing.assert_close(LF.generalized_jsd(student, teacher, beta=1.0), reverse)
    near_zero = LF.generalized_jsd(student, teacher, beta=1e-6)
    near_one = LF.generalized_jsd(student, teacher, beta=1 - 1e-6)
    assert abs(near_zero - forward) <= 1e-3 * (1 + forward)
    assert abs(near_one - reverse) <= 1e-3 * (1 + reverse)


@FAST
@given(pair=logits_pair(), name=st.sampled_from(DIVERGENCES + ["uld"]),
       tail=st.sampled_from(["renorm", "bucket"]), temperature=st.sampled_from([1.0, 2.0]),
       seed=st.integers(0, 1000))
def test_sparse_with_k_equal_vocab_equals_dense(pair, name, tail, temperature, seed):
    student, teacher = pair
    loss = getattr(LF, name)
    dense = loss(student, teacher, temperature=temperature)
    sparse = loss(student, full_topk(teacher, seed), tail=tail, temperature=temperature)
    torch.testing.assert_close(sparse, dense, rtol=1e-6, atol=1e-7)


@st.composite
def head_inputs(draw):
    """fp32 hidden / lm_head / labels (some ignored) / top-k teacher."""
    n, v, h = draw(st.integers(1, 12)), draw(st.integers(3, 40)), draw(st.integers(1, 8))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    labels = torch.randint(0, v, (n,), generator=g)
    labels[torch.rand(n, generator=g) < 0.3] = -100
    teacher = torch.log_softmax(2 * torch.randn(n, v, generator=g), -1)
    top = teacher.topk(draw(st.integers(1, v)))
    return {
        "hidden": torch.randn(n, h, generator=g),
        "weight": torch.randn(v, h, generator=g) / math.sqrt(h),
        "bias": torch.randn(v, generator=g),
        "labels": labels,
        "dense": teacher,
        "topk": TopKTargets(top.indices, top.values),
    }


def _loss_and_grads(fn, student_args, make_student):
    args = [a.clone().requires_grad_() for a in student_args]
    loss = fn(make_student(*args))
    return loss.detach(), torch.autograd.grad(loss, args)


@FAST
@given(x=head_inputs(), name=st.sampled_from(DIVERGENCES + ["uld", "cross_entropy"]),
       teacher=st.sampled_from(["dense", "topk"]), tail=st.sampled_from(["renorm", "bucket"]),
       chunk_size=st.integers(1, 7))
def test_chunked_equals_unchunked(x, name, teacher, tail, chunk_size):
    def fn(student, **kw):
        if name == "cross_entropy":
            return LF.cross_entropy(student, x["labels"], **kw)
        return getattr(LF, name)(student, x[teacher], x["labels"], tail=tail, temperature=2.0,
                                 **kw)

    args = (x["hidden"], x["weight"], x["bias"])
    chunked = _loss_and_grads(lambda s: fn(s, chunk_size=chunk_size), args, HiddenStates)
    unchunked = _loss_and_grads(fn, args, lambda h, w, b: h @ w.T + b)
    torch.testing.assert_close(chunked[0], unchunked[0], rtol=1e-5, atol=1e-5)
    for got, want in zip(chunked[1], unchunked[1], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@FAST
@given(x=head_inputs(), name=st.sampled_from(DIVERGENCES + ["uld", "cross_entropy"]),
       n_micro=st.integers(1, 4), path=st.sampled_from(["logits", "hidden"]))
def test_accumulation_with_num_items_equals_the_full_batch(x, name, n_micro, path):
    """Each micro-batch divides by the full batch's token count; the sums must match."""
    def loss(hidden, weight, bias, rows, **kw):
        student = (HiddenStates(hidden[rows], weight, bias) if path == "hidden"
                   else (hidden @ weight.T + bias)[rows])
        if name == "cross_entropy":
            return LF.cross_entropy(student, x["labels"][rows], chunk_size=3, **kw)
        teacher = TopKTargets(x["topk"].ids[rows], x["topk"].logprobs[rows])
        return getattr(LF, name)(student, teacher, x["labels"][rows], chunk_size=3, **kw)

    args = [t.double().requires_grad_() for t in (x["hidden"], x["weight"], x["bias"])]
    full = loss(*args, slice(None))
    full_grads = torch.autograd.grad(full, args)
    num_items = int((x["labels"] != -100).sum())
    bounds = torch.linspace(0, len(x["labels"]), n_micro + 1).long().tolist()
    accumulated = 0.0
    grads = [torch.zeros_like(a) for a in args]
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        micro = loss(*args, slice(start, stop), num_items=max(num_items, 1))
        accumulated = accumulated + micro.detach()
        for total, g in zip(grads, torch.autograd.grad(micro, args), strict=True):
            total += g
    torch.testing.assert_close(accumulated, full.detach(), rtol=1e-10, atol=1e-12)
    for got, want in zip(grads, full_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_all_rows_ignored_gives_zero_not_nan(name):
    logits = torch.randn(3, 5, requires_grad=True)
    loss = getattr(LF, name)(logits, torch.randn(3, 5), torch.full((3,), -100))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)
