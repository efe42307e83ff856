"""Tokenizer loading, end ids and the pad id: the rules student, teacher and trainer share.

Why one place: the student, the teacher service and the trainer each load tokenizers (by hub
name, local folder, or a GGUF file inside one) and must agree on which ids end an answer and
which id pads a batch; written three times these had started to differ.
"""

from __future__ import annotations

from typing import Any

from distill.data.targets import end_token_id


def load_tokenizer(name_or_path: str, *, revision: str | None = None,
                   gguf_file: str | None = None):
    """``AutoTokenizer.from_pretrained``; ``gguf_file`` names a GGUF file inside the folder
    (transformers reads its vocabulary and chat template; needs the ``gguf`` package)."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"revision": revision}
    if gguf_file:
        kwargs["gguf_file"] = gguf_file
    return AutoTokenizer.from_pretrained(name_or_path, **kwargs)


def end_token_ids(tokenizer, model: Any = None) -> list[int]:
    """Every id that ends an answer: the tokenizer's EOS and the generation config's EOS ids.

    Upstream SALMONN stopped on id 2 (LLaMA-2's EOS) whatever the tokenizer; LLaMA-3-Instruct
    ends with ``<|eot_id|>`` or ``<|end_of_text|>``, which both must stop generation. The first
    id is the one targets end with (``distill.data.targets``)."""
    ids = [end_token_id(tokenizer)]
    generation_config = getattr(model, "generation_config", None)
    extra = getattr(generation_config, "eos_token_id", None)
    if extra is not None:
        ids += [extra] if isinstance(extra, int) else list(extra)
    return list(dict.fromkeys(int(i) for i in ids))


def pad_token_id(tokenizer, end_ids: list[int]) -> int:
    """The tokenizer's pad id, else the first end id (LLaMA-3 defines none; padded positions
    are masked, so any id works, and an end id never adds a token the model never saw)."""
    pad = tokenizer.pad_token_id
    return int(pad if pad is not None else end_ids[0])
