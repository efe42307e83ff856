"""Recipe dtype names -> torch dtypes: the one map (recipes say ``bfloat16``, ``float16``,
``float32``; ``distill.schema.Dtype`` lists them)."""

from __future__ import annotations

import torch

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def torch_dtype(name: str) -> torch.dtype:
    """``torch.bfloat16`` for ``"bfloat16"`` etc.; ValueError naming the choices otherwise."""
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}: expected one of {', '.join(DTYPES)}") from None
