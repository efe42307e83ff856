"""Every loss x teacher form x tail mode x temperature x student path, against the naive
float64 references in losses_reference.py: values, gradients, and gradcheck."""

import losses_reference as R
import pytest
import torch
from losses_inputs import make_inputs
from torch.autograd import gradcheck

from distill import losses
from distill.losses import HiddenStates, TopKTargets
from distill.losses import functional as LF

TEACHERS = ["dense", "renorm", "bucket"]
TEMPERATURES = [1.0, 2.5]
PATHS = ["logits", "hidden"]


def _teachers(x, kind):
    """(library teacher, reference teacher, tail)."""
    if kind == "dense":
        return x["teacher_logits"], x["teacher_logits"], "bucket"
    return TopKTargets(x["ids"], x["logprobs"]), (x["ids"], x["logprobs"]), kind


def _student_fns(x, path, lib_loss, ref_loss):
    """(inputs needing grad, library fn, reference fn) for one student path."""
    if path == "logits":
        inputs = (x["student_logits"].clone().requires_grad_(),)
        return inputs, lib_loss, ref_loss
    inputs = tuple(x[k].clone().requires_grad_() for k in ("hidden", "weight", "bias"))

    def lib(h, w, b):
        return lib_loss(HiddenStates(h, w, b))

    def ref(h, w, b):
        return ref_loss(h @ w.T + b)

    return inputs, lib, ref


def _check(inputs, lib, ref):
    got, want = lib(*inputs), ref(*inputs)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    for g, w in zip(torch.autograd.grad(got, inputs), torch.autograd.grad(want, inputs),
                    strict=True):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-10)
    assert gradcheck(lib, inputs, fast_mode=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("teacher_kind", TEACHERS)
@pytest.mark.parametrize("name", list(R.DIVERGENCES))
def test_divergence_matches_reference(name, teacher_kind, temperature, path):
    x = make_inputs(seed=1)
    teacher, ref_teacher, tail = _teachers(x, teacher_kind)
    options = dict(temperature=temperature, tail=tail, chunk_size=3, **R.OPTIONS.get(name, {}))
    inputs, lib, ref = _student_fns(
        x, path,
        lambda s: getattr(LF, name)(s, teacher, x["labels"], **options),
        lambda s: R.kd_loss(name, s, ref_teacher, x["labels"], temperature, tail),
    )
    _check(inputs, lib, ref)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("teacher_kind", TEACHERS)
def test_uld_matches_reference(teacher_kind, temperature, path):
    # The teacher's tokenizer differs: 15 ids against the student's 11.
    x = make_inputs(seed=2, teacher_vocab=15)
    teacher, ref_teacher, tail = _teachers(x, teacher_kind)
    inputs, lib, ref = _student_fns(
        x, path,
        lambda s: LF.uld(s, teacher, x["labels"], temperature=temperature, tail=tail,
                         chunk_size=3),
        lambda s: R.uld_loss(s, ref_teacher, x["labels"], temperature, tail),
    )
    _check(inputs, lib, ref)


def test_uld_with_a_smaller_teacher_vocab_pads_with_zeros():
    x = make_inputs(seed=3, teacher_vocab=6)
    got = LF.uld(x["student_logits"], x["teacher_logits"], x["labels"])
    want = R.uld_loss(x["student_logits"], x["teacher_logits"], x["labels"], 1.0, "bucket")
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("path", PATHS)
def test_cross_entropy_matches_reference(path):
    x = make_inputs(seed=4)
    inputs, lib, ref = _student_fns(
        x, path,
        lambda s: LF.cross_entropy(s, x["labels"], chunk_size=2),
        lambda s: R.cross_entropy(s, x["labels"]),
    )
    _check(inputs, lib, ref)


def test_hand_computed_forward_kl():
    # Teacher (0.5, 0.5), student (0.25, 0.75): KL = 0.5 ln 2 + 0.5 ln(2/3).
    student = torch.log(torch.tensor([[0.25, 0.75]], dtype=torch.float64))
    teacher = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    want = 0.5 * torch.log(torch.tensor(2.0)) + 0.5 * torch.log(torch.tensor(2 / 3))
    torch.testing.assert_close(LF.forward_kl(student, teacher), want.double())


def test_hand_computed_bucket():
    # Vocab 3, teacher keeps id 0 with p=0.5 (rest 0.5); student q = (0.2, 0.3, 0.5) -> rest 0.8.
    student = torch.log(torch.tensor([[0.2, 0.3, 0.5]], dtype=torch.float64))
    teacher = TopKTargets(torch.tensor([[0]]), torch.log(torch.tensor([[0.5]], dtype=torch.float64)))
    want = 0.5 * torch.log(torch.tensor(0.5 / 0.2)) + 0.5 * torch.log(torch.tensor(0.5 / 0.8))
    torch.testing.assert_close(LF.forward_kl(student, teacher, tail="bucket"), want.double())
    # renorm: teacher (1.0), student (1.0) over the single kept id -> 0.
    torch.testing.assert_close(LF.forward_kl(student, teacher, tail="renorm"),
                               torch.tensor(0.0, dtype=torch.float64))


def test_temperature_squared_scaling_is_optional(inputs):
    x = inputs
    scaled = LF.forward_kl(x["student_logits"], x["teacher_logits"], temperature=3.0)
    plain = LF.forward_kl(x["student_logits"], x["teacher_logits"], temperature=3.0,
                          scale_by_t_squared=False)
    torch.testing.assert_close(scaled, 9 * plain)


MODULES = [
    ("forward_kl", losses.ForwardKL, {}),
    ("reverse_kl", losses.ReverseKL, {}),
    ("generalized_jsd", losses.GeneralizedJSD, {"beta": 0.3}),
    ("total_variation", losses.TotalVariation, {}),
    ("skew_forward_kl", losses.SkewForwardKL, {"skew": 0.2}),
    ("skew_reverse_kl", losses.SkewReverseKL, {"skew": 0.2}),
    ("uld", losses.ULD, {}),
]


@pytest.mark.parametrize(("name", "module", "extra"), MODULES)
def test_modules_match_functional(name, module, extra, inputs):
    x = inputs
    teacher = TopKTargets(x["ids"], x["logprobs"])
    options = dict(temperature=2.0, tail="renorm", chunk_size=2)
    student = HiddenStates(x["hidden"], x["weight"])
    got = module(**extra, **options)(student, teacher, x["labels"], num_items=9)
    want = getattr(LF, name)(student, teacher, x["labels"], num_items=9, **extra, **options)
    torch.testing.assert_close(got, want)


def test_cross_entropy_module(inputs):
    x = inputs
    got = losses.CrossEntropy(chunk_size=2)(x["student_logits"], x["labels"])
    torch.testing.assert_close(got, R.cross_entropy(x["student_logits"], x["labels"]))
