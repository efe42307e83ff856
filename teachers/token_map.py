"""Teacher ids the student reads otherwise: end tokens mapped, one-sided specials folded.

Why: teacher and student may share the ordinary vocabulary but not their special tokens (the
reference pair: DeepSeek-R1-Distill-Llama ends turns with ``<｜end▁of▁sentence｜>``, LLaMA-3.2-
Instruct targets end with ``<|eot_id|>``; R1 adds ``<think>``/``</think>``). Left as they are,
the teacher's end mass would sit on an id the student never ends with (CE + KD at 1:1 then teach
half one end, half the other), and an id at or above the student's vocab size would stop training.

Decided once, when the job starts (``plan``), and recorded in the cache meta; applied to every
cache row as it is written (``apply_rows``):
  map   every teacher token meaning "end" (its EOS, its generation config's EOS ids, specials
        named like an end of turn) -> the student's end id; any other special token the student
        has under the same text at another id -> that id.
  fold  every other teacher id the student cannot read as the same token (ids >= the student's
        vocab size, specials the student lacks): its mass joins the row's rest (the tail).
A slot freed by merging or folding keeps the row's width k: it gets a "filler", a student id the
teacher gives ~0 after the map (a mapped-away or folded id, or the student's BOS/pad), with the
log-prob floor (only rows nearly as wide as the vocabulary run out of those and take the lowest
free ids; their true small mass then stays in the rest). A response (generate mode) that contains a folded id is refused for that sample.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# Specials that end a turn or a text in common chat templates (Llama-3, R1-Distill, ChatML,
# GPT-2, SentencePiece). "<|end_header_id|>" is deliberately not one of them.
END_TOKEN = re.compile(
    r"^(<[|｜](eot_id|eom_id|end_of_text|end▁of▁sentence|endoftext|im_end|end|end_of_turn)[|｜]>"
    r"|</s>|<end_of_turn>)$"
)


class TokenMapError(ValueError):
    """A teacher row or response that the plan cannot express in the student's ids."""


def is_end_token(text: str | None) -> bool:
    return bool(text) and END_TOKEN.match(text) is not None


@dataclass(frozen=True)
class TokenMap:
    """teacher id -> student id (``mapped``), ids folded into the tail, fillers; see above."""

    student_vocab: int
    student_end: int
    mapped: dict[int, int] = field(default_factory=dict)
    folded: frozenset[int] = frozenset()
    fillers: tuple[int, ...] = ()
    names: dict[int, str] = field(default_factory=dict)  # teacher id -> token text (messages)
    beyond: int = 0  # teacher ids >= student_vocab that are no named token (folded by rule)

    @property
    def identity(self) -> bool:
        return not self.mapped and not self.folded and not self.beyond

    def meta(self) -> dict[str, Any]:
        """What the cache meta records (JSON: lists, so a reread compares equal)."""
        return {
            "mapped": sorted([t, s] for t, s in self.mapped.items()),
            "folded": sorted(self.folded),
            "student_end": self.student_end,
        }

    def describe(self) -> list[str]:
        lines = []
        if self.mapped:
            pairs = ", ".join(f"{self.names.get(t, t)!r} ({t}) -> {s}"
                              for t, s in sorted(self.mapped.items()))
            lines.append(f"teacher ids mapped onto the student's: {pairs}")
        if self.folded:
            shown = [f"{self.names.get(t, t)!r} ({t})" for t in sorted(self.folded)]
            lines.append(
                "teacher tokens the student lacks, folded into the tail: "
                + ", ".join(shown[:8]) + (f" and {len(shown) - 8} more" if len(shown) > 8 else "")
            )
        if self.beyond:
            lines.append(f"{self.beyond} unnamed teacher ids >= the student's vocab size "
                         f"{self.student_vocab}: folded into the tail")
        return lines

    # ------------------------------------------------------------------------------ rows
    def _fold(self, ids: np.ndarray) -> np.ndarray:
        folded = np.isin(ids, np.fromiter(self.folded, dtype=np.int64, count=len(self.folded)))
        return folded | (ids >= self.student_vocab)

    def apply_rows(
        self, ids: np.ndarray, logprobs: np.ndarray, rest: np.ndarray, floor: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows [T, k] (+ rest log-mass [T]) in teacher ids -> the same in student ids.

        Mass is conserved: a mapped id's mass moves to its student id (merged with it when the
        row already has it), a folded id's mass moves to the rest. Rows stay sorted best first.
        """
        ids = np.asarray(ids, dtype=np.int64).copy()
        logprobs = np.asarray(logprobs, dtype=np.float64).copy()
        rest = np.asarray(rest, dtype=np.float64).copy()
        if self.identity and not (ids >= self.student_vocab).any():
            return ids, logprobs.astype(np.float32), rest.astype(np.float32)
        touched = self._fold(ids) | np.isin(ids, list(self.mapped) or [-1])
        for t in np.flatnonzero(touched.any(-1)):
            ids[t], logprobs[t], rest[t] = self._row(ids[t], logprobs[t], rest[t], floor)
        return ids, logprobs.astype(np.float32), rest.astype(np.float32)

    def _row(self, ids, logprobs, rest, floor):
        kept: dict[int, float] = {}
        folded_mass = [rest]
        for token, value in zip(ids.tolist(), logprobs.tolist(), strict=True):
            if token in self.mapped:  # a student id: never folded (it may equal a folded one)
                token = self.mapped[token]
            elif token in self.folded or token >= self.student_vocab:
                folded_mass.append(value)
                continue
            if token in kept:
                kept[token] = float(np.logaddexp(kept[token], value))
            else:
                kept[token] = value
        spare = iter([*(f for f in self.fillers if f not in kept), *range(self.student_vocab)])
        while len(kept) < len(ids):  # rows wider than the fillers (k near the vocab): any id
            filler = next(spare, None)
            if filler is None:
                raise TokenMapError(f"no filler id left for a row of {len(ids)} ids")
            kept.setdefault(filler, floor)
        order = sorted(kept.items(), key=lambda pair: -pair[1])
        new_rest = float(np.logaddexp.reduce(np.array(folded_mass, dtype=np.float64)))
        return [t for t, _ in order], [v for _, v in order], new_rest

    def map_response(self, ids: Iterable[int]) -> list[int]:
        """A generated response in student ids; refuses one that holds a folded id."""
        ids = [int(t) for t in ids]
        bad = sorted({t for t in ids if t not in self.mapped
                      and (t in self.folded or t >= self.student_vocab)})
        out = [self.mapped.get(t, t) for t in ids]
        if bad:
            names = ", ".join(f"{self.names.get(t, '?')!r} ({t})" for t in bad[:5])
            raise TokenMapError(f"the teacher's answer holds tokens the student lacks: {names}")
        return out


# ------------------------------------------------------------------------------------ plan
def _token(tokenizer: Any, token_id: int) -> str | None:
    if token_id < 0 or token_id >= len(tokenizer):
        return None
    token = tokenizer.convert_ids_to_tokens(int(token_id))
    return None if token is None else str(token)


def teacher_end_ids(tokenizer: Any, extra: Iterable[int] = ()) -> set[int]:
    """The teacher's ids that mean "end": its EOS, ``extra`` (generation config), end specials."""
    ids = {int(i) for i in extra}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    added = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    ids |= {int(i) for token, i in added.items() if is_end_token(token)}
    return ids


def plan(teacher: Any, student: Any, student_end: int, *, extra_end_ids: Iterable[int] = (),
         teacher_vocab: int | None = None) -> TokenMap:
    """The map for two tokenizers that share their ordinary vocabulary (checked by the caller).

    ``teacher_vocab``: the teacher model's output width (may exceed its tokenizer's length);
    ids from ``len(teacher)`` up to it mean nothing and are folded when the student lacks them.
    """
    student_vocab = len(student)
    student_ids = student.get_vocab()
    names: dict[int, str] = {}
    mapped: dict[int, int] = {}
    folded: set[int] = set()
    ends = teacher_end_ids(teacher, extra_end_ids)
    for t in sorted(ends):
        names[t] = _token(teacher, t) or str(t)
        if t != student_end:
            mapped[t] = student_end
    added = teacher.get_added_vocab() if hasattr(teacher, "get_added_vocab") else {}
    for token, t in sorted(added.items(), key=lambda pair: pair[1]):
        t = int(t)
        if t in ends:
            continue
        names[t] = token
        if _token(student, t) == token:
            continue  # the same special at the same id
        if token in student_ids:
            mapped[t] = int(student_ids[token])  # the same special at another id
        else:
            folded.add(t)
    named = {t for t in [*mapped, *folded] if t >= student_vocab}
    beyond = max(len(teacher), teacher_vocab or 0) - student_vocab - len(named)  # unnamed ids
    candidates = [*sorted(t for t in [*mapped, *folded] if t < student_vocab),
                  *(getattr(student, f"{n}_token_id", None) for n in ("bos", "pad", "unk"))]
    fillers = tuple(dict.fromkeys(int(f) for f in candidates
                                  if f is not None and f != student_end and 0 <= f < student_vocab))
    return TokenMap(student_vocab, int(student_end), mapped, frozenset(folded), fillers, names,
                    max(beyond, 0))
