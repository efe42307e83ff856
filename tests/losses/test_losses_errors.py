"""Bad inputs raise ValueError naming what was expected and what arrived."""

import pytest
import torch

from distill.losses import GeneralizedJSD, HiddenStates, TopKTargets
from distill.losses import functional as LF

S = torch.randn(4, 10)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: LF.forward_kl(S, torch.randn(4, 9)), r"expected 4 rows x vocab 10.*got shape \[4, 9\]"),
        (lambda: LF.forward_kl(S, torch.randn(3, 10)), r"expected 4 rows x vocab 10.*got shape \[3, 10\]"),
        (lambda: LF.forward_kl(S, TopKTargets(torch.zeros(4, 3, dtype=torch.long), torch.zeros(4, 2))),
         r"same shape.*got ids \[4, 3\] and logprobs \[4, 2\]"),
        (lambda: LF.forward_kl(S, TopKTargets(torch.zeros(5, 3, dtype=torch.long), torch.zeros(5, 3))),
         r"expected 4 rows.*got ids shape \[5, 3\]"),
        (lambda: LF.forward_kl(S, TopKTargets(torch.full((4, 2), 10), torch.zeros(4, 2))),
         r"expected ids in \[0, 10\).*got range \[10, 10\]"),
        (lambda: LF.forward_kl(S, TopKTargets(torch.zeros(4, 11, dtype=torch.long), torch.zeros(4, 11))),
         r"k=11 exceeds the student vocab size 10"),
        (lambda: LF.forward_kl(S, TopKTargets(torch.zeros(4, 2), torch.zeros(4, 2))),
         r"expected an integer dtype, got torch.float32"),
        (lambda: LF.forward_kl(S, S, torch.zeros(5, dtype=torch.long)),
         r"expected 4 integer labels.*got shape \[5\]"),
        (lambda: LF.forward_kl(HiddenStates(torch.randn(4, 3), torch.randn(10, 5)), S),
         r"expected \[..., H=5\].*got shape \[4, 3\]"),
        (lambda: LF.forward_kl(HiddenStates(torch.randn(4, 5), torch.randn(10, 5), torch.randn(9)), S),
         r"bias: expected \[V=10\], got shape \[9\]"),
        (lambda: LF.forward_kl(HiddenStates(torch.randn(4, 5), torch.randn(12, 5)), S),
         r"expected 4 rows x vocab 12.*got shape \[4, 10\]"),
        (lambda: LF.forward_kl(torch.randn(10), S), r"expected logits \[..., V\]"),
        (lambda: LF.forward_kl(S, S, tail="drop"), r"tail: expected one of .*got 'drop'"),
        (lambda: LF.forward_kl(S, S, temperature=0.0), r"temperature: expected > 0, got 0.0"),
        (lambda: LF.forward_kl(S, S, num_items=0), r"num_items: expected a positive.*got 0"),
        (lambda: LF.forward_kl(S, S, chunk_size=0), r"chunk_size: expected a positive int, got 0"),
        (lambda: LF.generalized_jsd(S, S, beta=1.5), r"beta: expected a value in \[0, 1\], got 1.5"),
        (lambda: GeneralizedJSD(beta=-0.1), r"beta: expected a value in \[0, 1\], got -0.1"),
        (lambda: LF.cross_entropy(S, None), r"labels are required"),
        (lambda: LF.cross_entropy(S, torch.tensor([0, 1, 2, 10])),
         r"expected ids in \[0, 10\) or ignore_index=-100, got range \[0, 10\]"),
        (lambda: LF.uld(S, torch.randn(3, 7)), r"expected 4 rows x vocab 7.*got shape \[3, 7\]"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_uld_accepts_a_different_vocab():
    assert torch.isfinite(LF.uld(S, torch.randn(4, 7)))


# ------------------------------------------------------------------------------ the registry
def test_registry_derives_recipe_choices_trainer_and_functional_api():
    """One registered class is everything: the recipe accepts its name, checks its options,
    the trainer builds it, and functional.<name> computes the same value as the module."""
    from distill.config import LossConfig
    from distill.losses import LOSSES, DistillationLoss, build_loss, divergences, register_loss

    assert {"forward_kl", "reverse_kl", "jsd", "tvd", "skew_forward_kl", "skew_reverse_kl",
            "uld"} <= set(LOSSES)
    assert LossConfig(divergence="jsd", options={"beta": 0.3}).options == {"beta": 0.3}
    with pytest.raises(ValueError, match="forward_kl takes no option 'beta'"):
        LossConfig(divergence="forward_kl", options={"beta": 0.3})
    with pytest.raises(ValueError, match=r"jsd option beta: expected a value in \[0, 1\]"):
        LossConfig(divergence="jsd", options={"beta": 1.5})

    @register_loss("half_forward_kl")
    class HalfForwardKL(DistillationLoss):
        divergence_fn = staticmethod(lambda s, t, weight: weight * divergences.forward_kl(s, t))
        options = {"weight": 0.5}

    try:
        cfg = LossConfig.model_validate({"divergence": "half_forward_kl"})
        g = torch.Generator().manual_seed(0)
        student, teacher = torch.randn(3, 7, generator=g), torch.randn(3, 7, generator=g)
        half = build_loss(cfg.divergence)(student, teacher)
        torch.testing.assert_close(half, 0.5 * LF.forward_kl(student, teacher))
    finally:
        del LOSSES["half_forward_kl"]


def test_one_default_chunk_size_for_library_and_recipe():
    from distill.config import LossConfig
    from distill.losses import ForwardKL

    assert LossConfig().chunk_size == ForwardKL().chunk_size == LF.DEFAULT_CHUNK_SIZE
