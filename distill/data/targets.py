"""The one definition of a sample's target token ids, shared by teacher, student and trainer.

Why one place: the teacher scores exactly these ids (its cache stores them) and the trainer
refuses a sample whose cached ids differ from the student's tokenised target. If two modules
tokenised targets in two ways, every sample would be refused (or worse, silently misaligned).

Rule (as upstream SALMONN, with its end-token bug fixed): the target text, tokenised without
special tokens, then the tokenizer's real end-of-sequence id. The prompt ends with
``ASSISTANT:`` and the target follows it directly.
"""

from __future__ import annotations

from typing import Any


def end_token_id(tokenizer: Any) -> int:
    """The id that ends a target: the tokenizer's own EOS (never LLaMA-2's hard-coded 2)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        name = getattr(tokenizer, "name_or_path", type(tokenizer).__name__)
        raise ValueError(f"tokenizer {name!r} has no eos_token_id: cannot end a target")
    return int(eos)


def encode_target(tokenizer: Any, text: str) -> list[int]:
    """Token ids the student is trained to produce for ``text`` (ending with the EOS id)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [*map(int, ids), end_token_id(tokenizer)]
