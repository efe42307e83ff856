"""Input containers and the shape checks every loss shares.

Why here: each loss accepts the same two student forms (logits, or hidden states plus lm_head)
and the same two teacher forms (dense logits, or cached top-k), so they are named and checked
once, with errors that say what was expected and what arrived.
"""

from typing import NamedTuple

import torch
from torch import Tensor


class TopKTargets(NamedTuple):
    """A teacher cached as its top-k per position.

    ids: token ids [..., k], distinct within a row. logprobs: [..., k], the teacher's
    log-softmax at T=1 over its full vocabulary, so exp(logprobs) sums to at most 1.
    rest: [...] optional log of the mass outside the top-k, as the teacher had it (the cache
    stores it). Without it the "bucket" tail takes 1 - sum(exp(logprobs)), which quantised
    log-probs can push to 0 (or below) while the true rest is several percent.
    """

    ids: Tensor
    logprobs: Tensor
    rest: Tensor | None = None


class HiddenStates(NamedTuple):
    """A student given as final hidden states [..., H] plus its lm_head.

    weight: [V, H]; bias: [V] or None. The losses then build logits one token chunk at a
    time and never hold [N, V] at once.
    """

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None = None


Teacher = Tensor | TopKTargets
Student = Tensor | HiddenStates


def _shape(t: Tensor) -> list[int]:
    return list(t.shape)


def student_shape(student: Student) -> tuple[int, int]:
    """(rows, vocab) of the student after flattening leading dims; raises on bad shapes."""
    if isinstance(student, HiddenStates):
        hidden, weight, bias = student
        if weight.dim() != 2:
            raise ValueError(f"lm_head weight: expected [V, H], got shape {_shape(weight)}")
        if hidden.dim() < 2 or hidden.shape[-1] != weight.shape[1]:
            raise ValueError(
                f"hidden states: expected [..., H={weight.shape[1]}] (lm_head hidden size), "
                f"got shape {_shape(hidden)}"
            )
        if bias is not None and _shape(bias) != [weight.shape[0]]:
            raise ValueError(
                f"lm_head bias: expected [V={weight.shape[0]}], got shape {_shape(bias)}"
            )
        return hidden.numel() // hidden.shape[-1], weight.shape[0]
    if not isinstance(student, Tensor) or student.dim() < 2:
        raise ValueError(
            "student: expected logits [..., V] or HiddenStates(hidden, weight, bias), "
            f"got {type(student).__name__} {getattr(student, 'shape', '')}"
        )
    return student.numel() // student.shape[-1], student.shape[-1]


def check_teacher(teacher: Teacher, n_rows: int, vocab: int | None) -> Teacher:
    """Flatten the teacher to rows and check it against the student.

    vocab=None skips the vocabulary check (ULD compares different tokenizers).
    """
    if isinstance(teacher, TopKTargets):
        ids, logprobs = teacher.ids, teacher.logprobs
        if _shape(ids) != _shape(logprobs) or ids.dim() < 1:
            raise ValueError(
                f"TopKTargets: ids and logprobs must have the same shape [..., k], "
                f"got ids {_shape(ids)} and logprobs {_shape(logprobs)}"
            )
        if ids.dtype.is_floating_point or ids.dtype == torch.bool:
            raise ValueError(f"TopKTargets.ids: expected an integer dtype, got {ids.dtype}")
        k = ids.shape[-1]
        if ids.numel() // max(k, 1) != n_rows:
            raise ValueError(
                f"TopKTargets: expected {n_rows} rows (one per student row), "
                f"got ids shape {_shape(ids)}"
            )
        if vocab is not None:
            if k > vocab:
                raise ValueError(f"TopKTargets: k={k} exceeds the student vocab size {vocab}")
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
                raise ValueError(
                    f"TopKTargets.ids: expected ids in [0, {vocab}) (student vocab), "
                    f"got range [{int(ids.min())}, {int(ids.max())}]"
                )
        rest = teacher.rest
        if rest is not None:
            if _shape(rest) != _shape(ids)[:-1]:
                raise ValueError(
                    f"TopKTargets.rest: expected shape {_shape(ids)[:-1]} (one per row), "
                    f"got {_shape(rest)}"
                )
            rest = rest.reshape(-1)
        return TopKTargets(ids.reshape(-1, k), logprobs.reshape(-1, k), rest)
    if not isinstance(teacher, Tensor) or teacher.dim() < 2:
        raise ValueError(
            "teacher: expected logits [..., V] or TopKTargets(ids, logprobs), "
            f"got {type(teacher).__name__} {getattr(teacher, 'shape', '')}"
        )
    teacher_vocab = teacher.shape[-1]
    expected_vocab = teacher_vocab if vocab is None else vocab
    if teacher.numel() // teacher_vocab != n_rows or teacher_vocab != expected_vocab:
        raise ValueError(
            f"teacher logits: expected {n_rows} rows x vocab {expected_vocab} (as the student), "
            f"got shape {_shape(teacher)}"
        )
    return teacher.reshape(-1, teacher_vocab)


def check_labels(labels: Tensor | None, n_rows: int) -> Tensor | None:
    """Labels flattened to [N]; one per student row."""
    if labels is None:
        return None
    if labels.numel() != n_rows or labels.dtype.is_floating_point:
        raise ValueError(
            f"labels: expected {n_rows} integer labels (one per student row), "
            f"got shape {_shape(labels)} dtype {labels.dtype}"
        )
    return labels.reshape(-1)


def target_rows(labels: Tensor | None, ignore_index: int) -> tuple[Tensor | None, int | None]:
    """Indices of rows that carry a target, or None when every row does (no copy needed)."""
    if labels is None:
        return None, None
    keep = labels != ignore_index
    n_valid = int(keep.sum())
    if n_valid == labels.numel():
        return None, n_valid
    return keep.nonzero().squeeze(-1), n_valid


def take_rows(teacher: Teacher, rows: slice | Tensor) -> Teacher:
    """The teacher's rows for one chunk (a view for slices)."""
    if isinstance(teacher, TopKTargets):
        rest = None if teacher.rest is None else teacher.rest[rows]
        return TopKTargets(teacher.ids[rows], teacher.logprobs[rows], rest)
    return teacher[rows]
