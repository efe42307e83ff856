"""Tokenizer fingerprints: do teacher and student mean the same thing by the same token id?

Why: the cache stores the teacher's top-k *ids*, and the student reads them as its own ids. Two
tokenizers can look alike and still disagree (R1-Distill-Llama renames Llama-3's reserved
special tokens and has its own chat template). We compare what crosses between them: the map of
ordinary (non-added) tokens to ids (``Relation``: same vocabulary, same ordinary vocabulary
with different specials, or different vocabularies). Chat templates and special tokens may
differ: each side builds its own prompt, and token_map.py maps the teacher's end tokens onto the
student's and folds specials only the teacher has into the tail. Different vocabularies take the
cross-tokenizer path (the recipe's ``loss.cross_tokenizer``): the cache keeps the teacher's own
tokens and the trainer aligns them with the student's by characters (distill.data.cross_rows).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from distill.errors import DistillError

SPECIAL_NAMES = ("bos", "eos", "pad", "unk")


class TokenizerMismatch(DistillError, ValueError):
    """Teacher and student tokenizers disagree on ids the cache would carry across."""


@dataclass(frozen=True)
class TokenizerFingerprint:
    name: str
    vocab_sha: str  # sha256 of the ordinary token -> id map
    vocab_size: int  # len(tokenizer), added tokens included
    ordinary_tokens: int
    special: dict[str, tuple[str, int] | None] = field(default_factory=dict)
    added_sha: str = ""  # sha256 of the added-token -> id map

    @property
    def digest(self) -> str:
        """One hash of all of the above (recorded in the cache's meta)."""
        blob = json.dumps(
            [self.vocab_sha, self.vocab_size, self.added_sha, sorted(self.special.items())],
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _name(tokenizer: Any) -> str:
    return str(getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__)


def _vocab_split(tokenizer: Any) -> tuple[dict[str, int], dict[str, int]]:
    vocab = tokenizer.get_vocab()
    added = dict(tokenizer.get_added_vocab()) if hasattr(tokenizer, "get_added_vocab") else {}
    ordinary = {token: int(i) for token, i in vocab.items() if token not in added}
    return ordinary, {token: int(i) for token, i in added.items()}


def _sha(mapping: dict[str, int]) -> str:
    blob = json.dumps(sorted(mapping.items()), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def fingerprint(tokenizer: Any) -> TokenizerFingerprint:
    ordinary, added = _vocab_split(tokenizer)
    special: dict[str, tuple[str, int] | None] = {}
    for name in SPECIAL_NAMES:
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        token = getattr(tokenizer, f"{name}_token", None)
        special[name] = None if token_id is None else (str(token), int(token_id))
    return TokenizerFingerprint(
        name=_name(tokenizer),
        vocab_sha=_sha(ordinary),
        vocab_size=len(tokenizer),
        ordinary_tokens=len(ordinary),
        special=special,
        added_sha=_sha(added),
    )


class Relation(StrEnum):
    """How the teacher's ids relate to the student's (what crosses between them: token ids)."""

    SAME = "same vocabulary"  # every id means the same token: rows are copied as they are
    SAME_ORDINARY = "same ordinary vocabulary, different special tokens"  # token_map.py
    DIFFERENT = "different vocabularies"  # cross-tokenizer: the cache keeps the teacher's tokens


PATHS = {
    Relation.SAME: "teacher ids cross as they are",
    Relation.SAME_ORDINARY: "teacher ids cross through the token map (ends mapped, one-sided "
                            "specials folded)",
    Relation.DIFFERENT: "cross-tokenizer: the cache keeps the teacher's own tokens and the "
                        "trainer aligns them with the student's by characters",
}


@dataclass(frozen=True)
class Compatibility:
    relation: Relation
    notes: list[str] = field(default_factory=list)
    cross_tokenizer: str = "off"  # the recipe's loss.cross_tokenizer, for DIFFERENT

    @property
    def choice(self) -> str:
        """One line: the relation found and the path chosen."""
        path = PATHS[self.relation]
        if self.relation is Relation.DIFFERENT:
            path += f" (loss.cross_tokenizer: {self.cross_tokenizer})"
        return f"teacher and student tokenizers: {self.relation.value}: {path}"


def relation(teacher_fp: TokenizerFingerprint, student_fp: TokenizerFingerprint) -> Relation:
    """SAME, SAME_ORDINARY, or DIFFERENT (the ordinary vocabularies differ)."""
    if teacher_fp.vocab_sha != student_fp.vocab_sha:
        return Relation.DIFFERENT
    same_specials = (teacher_fp.added_sha == student_fp.added_sha
                     and teacher_fp.vocab_size == student_fp.vocab_size)
    return Relation.SAME if same_specials else Relation.SAME_ORDINARY


def check_compatible(teacher: Any, student: Any, cross_tokenizer: str = "off") -> Compatibility:
    """Which relation the tokenizers have and which path follows (``Compatibility.choice``).

    SAME: nothing to do. SAME_ORDINARY: the specials differ; the caller maps or folds them
    (token_map.plan) and the notes say so. DIFFERENT: the cross-tokenizer path when
    ``cross_tokenizer`` (the recipe's loss.cross_tokenizer) is auto, map or uld; refused
    (TokenizerMismatch) when it is off. A student without an EOS token is always refused.
    """
    teacher_fp, student_fp = fingerprint(teacher), fingerprint(student)
    names = f"teacher tokenizer {teacher_fp.name!r} and student tokenizer {student_fp.name!r}"
    found = relation(teacher_fp, student_fp)
    problems, notes = [], []
    if found is Relation.DIFFERENT and cross_tokenizer == "off":
        problems.append(_vocab_difference(teacher, student))
    end = student_fp.special.get("eos")
    if end is None:
        problems.append(f"student tokenizer {student_fp.name!r} has no EOS token to end targets")
    if problems:
        raise TokenizerMismatch(
            f"{names} disagree on token ids:\n  - "
            + "\n  - ".join(problems)
            + "\nThe cache stores token ids, so the student would learn the wrong tokens. Use a "
            "teacher that shares the student's tokenizer, or set loss.cross_tokenizer to auto, "
            "map or uld (the cache then keeps the teacher's own tokens, aligned by characters)."
        )
    if found is Relation.SAME_ORDINARY:
        notes.append(f"{names}: {found.value} (ends mapped, one-sided specials folded)")
        teacher_end = teacher_fp.special.get("eos")
        if end is not None and teacher_end is not None and teacher_end != end:
            notes.append(
                f"the teacher ends its turns with {teacher_end[0]!r} (id {teacher_end[1]}), "
                f"the student's targets end with {end[0]!r} (id {end[1]}): mapped"
            )
    return Compatibility(found, notes, cross_tokenizer)


def _vocab_difference(teacher: Any, student: Any) -> str:
    t_vocab, _ = _vocab_split(teacher)
    s_vocab, _ = _vocab_split(student)
    differing = sorted(tok for tok in set(t_vocab) | set(s_vocab) if t_vocab.get(tok) != s_vocab.get(tok))
    examples = ", ".join(
        f"{tok!r}: teacher {t_vocab.get(tok)} vs student {s_vocab.get(tok)}" for tok in differing[:3]
    )
    return (
        f"{len(differing)} ordinary tokens map to different ids "
        f"(teacher {len(t_vocab)} tokens, student {len(s_vocab)}), e.g. {examples}"
    )
