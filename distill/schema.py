"""The base of every configuration section, and the value types they share.

Why here, at the bottom: each part owns the schema of its own recipe section (``students`` the
model, ``teachers`` the teacher, ``distill.data`` audio decoding and augmentation) and
``distill.config`` composes them into a recipe. They all need one strictness rule: unknown keys are
errors (a typo in a 3000-step run's recipe should fail in a second, not after an hour) and values
are validated on assignment. Imports nothing of the toolkit.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Probability = Annotated[float, Field(ge=0, le=1)]
Dtype = Literal["bfloat16", "float16", "float32"]


class Strict(BaseModel):
    """Base of every recipe section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def ordered_range(value: tuple[float, float], name: str) -> tuple[float, float]:
    """``value`` if it is a ``[low, high]`` pair with low <= high; else a ValueError naming it."""
    low, high = value
    if low > high:
        raise ValueError(f"{name} range must be [low, high] with low <= high, got [{low}, {high}]")
    return value
