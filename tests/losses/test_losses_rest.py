"""A student equal to the teacher pays ~0 from a quantised top-k cache, for every divergence and
tail, once the cache stores the teacher's rest mass (the mass outside the top-k).

Why: 12-bit log-probs are rounded by up to 0.0049 nats each, so the kept mass of a peaked row can
reach 1 after rounding while the true rest is a few percent. Recomputing the rest as 1 - sum p
then floors it at 1e-8, and a perfect student pays for it (worst in reverse KL at T > 1).
"""

import math

import numpy as np
import pytest
import torch

from distill.losses import TopKTargets
from distill.losses import functional as LF
from teachers.cache.format import (
    CachedSample,
    CacheMeta,
    LogprobCodec,
    decode_record,
    encode_record,
    rest_from_topk,
)

K = 8
LOSSES = {
    "forward_kl": LF.forward_kl,
    "reverse_kl": LF.reverse_kl,
    "jsd": LF.generalized_jsd,
    "tvd": LF.total_variation,
    "skew_forward_kl": LF.skew_forward_kl,
    "skew_reverse_kl": LF.skew_reverse_kl,
    "uld": LF.uld,
}
FLOOR = 2e-3  # nats per token: KL-type losses are second order in the cache's rounding error
FIRST_ORDER = ("tvd", "uld")  # distances are first order: sum p |d log p| <= max_error, x2 margin


def floor(name: str, temperature: float) -> float:
    if name in FIRST_ORDER:
        return 2 * cache_meta(2).max_logprob_error * temperature**2  # T^2 scaling
    return FLOOR


def peaked_rows(n: int = 64, vocab: int = 300, seed: int = 0) -> torch.Tensor:
    """Peaked rows whose true rest outside the top-8 is 0.06-7 % (rounding lifts 40 % of them
    to a kept mass >= 1)."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, vocab, generator=generator, dtype=torch.float64)
    top = torch.randint(0, vocab, (n,), generator=generator)
    logits[torch.arange(n), top] += torch.linspace(10.0, 12.0, n, dtype=torch.float64)
    return logits


def cache_meta(vocab: int) -> CacheMeta:
    return CacheMeta(teacher="t", teacher_revision=None, tokenizer_fingerprint="fp",
                     target_tokenizer_fingerprint="fp", mode="score", k=K, logprob_mode="raw_logprobs",
                     temperature=1.0, prompt_template_hash="h", vocab_size=vocab)


def cached_teacher(logits: torch.Tensor, with_rest: bool) -> TopKTargets:
    """The teacher as the cache returns it (a record of the current format, written and read
    back): rounded top-k log-probs, and the stored rest or none."""
    logp = logits.log_softmax(-1)
    top = logp.topk(K, dim=-1)
    raw = top.values.float().numpy()
    meta = cache_meta(logits.shape[-1])
    sample = CachedSample(top.indices[:, 0].numpy(), top.indices.numpy(), raw)
    _, back = decode_record(encode_record("x", sample, meta), meta)
    rest = torch.from_numpy(back.rest_logprobs) if with_rest else None
    return TopKTargets(torch.from_numpy(back.topk_ids), torch.from_numpy(back.topk_logprobs), rest)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("tail", ["bucket", "renorm"])
@pytest.mark.parametrize("name", sorted(LOSSES))
def test_a_student_equal_to_the_teacher_pays_about_zero(name, tail, temperature):
    logits = peaked_rows()
    teacher = cached_teacher(logits, with_rest=True)
    loss = LOSSES[name](logits.float(), teacher, tail=tail, temperature=temperature)
    assert abs(float(loss)) < floor(name, temperature), f"{name} {tail} T={temperature}: {float(loss):.5f}"


def test_the_rows_are_the_hard_case_and_without_the_stored_rest_the_student_pays():
    """Guards the test above: rounding pushes these rows' kept mass to 1, and recomputing the
    rest from the rounded log-probs costs reverse KL at T=2 far above the floor."""
    logits = peaked_rows()
    teacher = cached_teacher(logits, with_rest=False)
    kept = teacher.logprobs.double().exp().sum(-1)
    true_rest = 1 - logits.softmax(-1).topk(K, dim=-1).values.sum(-1)
    assert float((kept >= 1).double().mean()) > 0.3 and float(true_rest.min()) > 5e-4
    loss = LF.reverse_kl(logits.float(), teacher, tail="bucket", temperature=2.0)
    assert float(loss) > 100 * FLOOR  # 0.38 nats/token here


def test_stored_rest_is_the_true_rest_within_a_quantisation_step():
    logits = peaked_rows()
    teacher = cached_teacher(logits, with_rest=True)
    true_rest = (1 - logits.softmax(-1).topk(K, dim=-1).values.sum(-1)).log()
    step = LogprobCodec().step
    assert float((teacher.rest.double() - true_rest).abs().max()) <= step / 2 + 1e-5
    assert math.isclose(float(np.exp(rest_from_topk(np.log([[0.5, 0.25]])))[0]), 0.25)
