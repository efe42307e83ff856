"""Decoding for the student: prompt embeddings in, token ids out, with the LLM's KV cache.

Why transformers' ``generate(inputs_embeds=...)``: beams, repetition penalty and the cache are
done right there; we only build the left-padded prompt (audio spliced in) and pass the real end
ids, fixing upstream's stop-on-id-2 bug (docs/reference.md §1). As upstream, the repetition penalty
sees only generated tokens (the prompt is embeddings, not ids).

The penalty is applied by our own ``RepetitionPenaltyLogitsProcessor`` instance: transformers
5.x builds its own with ``prompt_ignore_length`` = each row's left padding, which, when only
embeddings are given, skips that many *generated* tokens of a padded row, so a batched row
would decode differently from the same prompt alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from students.config import DecodingConfig
from students.prompting import assemble_inputs

if TYPE_CHECKING:
    from students.model import SalmonnStudent

def decoding_kwargs(decoding: DecodingConfig | None, **overrides) -> dict:
    """Arguments for ``generate``: the decoding section (the reference decoding,
    ``DecodingConfig()``, when None), then the overrides.

    Sampling knobs are only passed when sampling, so transformers does not warn about them."""
    kwargs = (decoding or DecodingConfig()).model_dump()
    kwargs.update(overrides)  # other transformers generate() options pass through untouched
    if not kwargs["do_sample"]:
        kwargs.pop("temperature")
        kwargs.pop("top_p")
    if kwargs["num_beams"] == 1:
        kwargs.pop("length_penalty")
    return kwargs


@torch.no_grad()
def generate(
    student: SalmonnStudent, batch: dict, decoding: DecodingConfig | None = None, **overrides
) -> torch.Tensor:
    """[B, new tokens] ids; rows that ended early are padded with the pad id after the end id."""
    audio = student.encode_audio(batch)
    inputs = assemble_inputs(
        student.embed_tokens, audio, batch, padding_side="left", with_targets=False
    )
    kwargs = decoding_kwargs(decoding, **overrides)
    processors = LogitsProcessorList(kwargs.pop("logits_processor", None) or [])
    penalty = kwargs.pop("repetition_penalty")
    if penalty != 1.0:
        processors.insert(0, RepetitionPenaltyLogitsProcessor(penalty))
    return student.causal_lm.generate(
        inputs_embeds=inputs.inputs_embeds,
        attention_mask=inputs.attention_mask,
        eos_token_id=student.end_ids,
        pad_token_id=student.pad_id,
        use_cache=True,
        logits_processor=processors,
        **kwargs,
    )
