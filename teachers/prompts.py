"""What the teacher sees for each sample: privileged text in the teacher's own chat template.

Why ids, not strings: the teacher (e.g. R1-Distill-Llama) and the student (Llama-3.2) have
different chat templates and special tokens, so the prompt is built with the *teacher's*
tokenizer and ``apply_chat_template(tokenize=True)``, and the response is the *student's*
target ids appended as they are. Decoding and re-encoding across the boundary could merge or
split tokens and silently misalign every soft target.

Fields a template may use, from a manifest record:
  {text}      the reference (transcript, caption; for captions with several references, all of
              them, joined by " | ")
  {question}  the record's question ("" when absent)
  {context}   what is known about the clip: its references or text, for question answering
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Iterable, Mapping
from typing import Any

from distill.errors import DistillError

FIELDS = ("text", "question", "context")
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class PromptError(DistillError, ValueError):
    """A task without a teacher prompt, or a template with an unknown field."""


def _get(prompt: Any, key: str) -> str | None:
    return prompt.get(key) if isinstance(prompt, Mapping) else getattr(prompt, key, None)


def check_templates(prompts: Mapping[str, Any], tasks: Iterable[str]) -> None:
    """Fail before any work if a task has no prompt or a template names an unknown field."""
    missing = sorted({t for t in tasks if t not in prompts})
    if missing:
        raise PromptError(
            f"no teacher prompt for task(s) {', '.join(missing)}: add teacher.prompts."
            f"{missing[0]} (user: a template with {{text}}, {{question}} or {{context}}) to the recipe"
        )
    for task, prompt in prompts.items():
        for part in ("system", "user"):
            template = _get(prompt, part)
            if template is None:
                continue
            try:
                names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
            except ValueError as err:
                raise PromptError(f"teacher.prompts.{task}.{part}: bad template ({err})") from None
            unknown = sorted(names - set(FIELDS))
            if unknown:
                raise PromptError(
                    f"teacher.prompts.{task}.{part}: unknown field(s) {', '.join(unknown)} "
                    f"(known: {', '.join(FIELDS)})"
                )


def record_fields(record: Mapping[str, Any]) -> dict[str, str]:
    references = [r for r in (record.get("references") or []) if r]
    text = record.get("text") or ""
    known = " | ".join(references) if len(references) > 1 else text
    return {"text": known, "question": record.get("question") or "", "context": known}


def messages_for(record: Mapping[str, Any], prompts: Mapping[str, Any]) -> list[dict[str, str]]:
    task = record["task"]
    if task not in prompts:
        raise PromptError(f"no teacher prompt for task {task!r}")
    prompt, fields = prompts[task], record_fields(record)
    messages = []
    system = _get(prompt, "system")
    if system:
        messages.append({"role": "system", "content": system.format(**fields)})
    messages.append({"role": "user", "content": _get(prompt, "user").format(**fields)})
    return messages


def prompt_ids(
    tokenizer: Any,
    record: Mapping[str, Any],
    prompts: Mapping[str, Any],
    reasoning: str = "none",
    rationale: str | None = None,
) -> list[int]:
    """The teacher's prompt as token ids, ending where the assistant's answer starts.

    ``reasoning`` (score mode, see ``reasoning_suffix``): "closed" or "auto" end the prompt after
    a closed think block, so the scored answer sits where a reasoning teacher writes answers.
    """
    encoded = tokenizer.apply_chat_template(
        messages_for(record, prompts), tokenize=True, add_generation_prompt=True
    )
    if isinstance(encoded, Mapping) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return [int(i) for i in encoded] + reasoning_suffix(tokenizer, reasoning, rationale)


# ------------------------------------------------------------------------ reasoning teachers
_PROBE = [{"role": "user", "content": "x"}]


def opens_think_block(tokenizer: Any) -> bool:
    """Does the chat template's generation prompt end inside an open ``<think>`` block?

    R1-style templates do (``<｜Assistant｜><think>\n``): the next token the teacher writes is
    thinking, not the answer. Read from what the generation prompt adds to a probe chat.
    """
    if not getattr(tokenizer, "chat_template", None):
        return False
    with_prompt = tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=True)
    without = tokenizer.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=False)
    added = with_prompt[len(without):] if with_prompt.startswith(without) else with_prompt
    opened = added.rfind(THINK_OPEN)
    return opened >= 0 and THINK_CLOSE not in added[opened:]


def closes_reasoning(tokenizer: Any, reasoning: str) -> bool:
    """Resolve ``teacher.reasoning``: "auto" closes only for templates that open a think block."""
    if reasoning not in ("auto", "closed", "none"):
        raise PromptError(f"teacher.reasoning: expected auto, closed or none, got {reasoning!r}")
    return reasoning == "closed" or (reasoning == "auto" and opens_think_block(tokenizer))


def reasoning_suffix(tokenizer: Any, reasoning: str, rationale: str | None = None) -> list[int]:
    """Ids that close the reasoning block after the generation prompt (empty list: none).

    R1 writes ``<think>\n{rationale}\n</think>\n\n{answer}``; an empty rationale gives
    ``<think>\n\n</think>\n\n``. The opening tag comes from the template when it opens the
    block, else from here. ``rationale``: the teacher's cached thinking (generate-then-score).
    Tokenised on its own (the prompt ends at a special token or a newline), so the ids are the
    ones the teacher would have written.
    """
    if not closes_reasoning(tokenizer, reasoning):
        return []
    body = (rationale or "").strip()
    text = ("" if opens_think_block(tokenizer) else f"{THINK_OPEN}\n")
    text += (f"{body}\n" if body else "\n") + f"{THINK_CLOSE}\n\n"
    return [int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"]]


def template_hash(prompts: Mapping[str, Any], chat_template: str | None, closed: bool = False) -> str:
    """Identifies what the teacher was shown: the recipe's prompts, its chat template, and
    whether score prompts end with a closed reasoning block."""
    plain = {
        task: {"system": _get(p, "system"), "user": _get(p, "user")} for task, p in prompts.items()
    }
    shown = {"prompts": plain, "chat_template": chat_template or ""}
    if closed:  # absent otherwise, so caches made before this setting keep their hash
        shown["closed_reasoning"] = True
    blob = json.dumps(shown, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:32]


# ----------------------------------------------------------------------- generated answers
def split_rationale(tokenizer: Any, ids: list[int]) -> tuple[int, str | None]:
    """Where the answer starts in generated ids, and the rationale text before it.

    R1-style teachers write ``<think> ... </think>`` then the answer. The split is found on ids
    (the first position whose decoded prefix contains ``</think>``), so the answer ids are the
    teacher's own ids, never re-tokenised. No ``</think>``: everything is the answer.
    """
    def prefix_has_close(n: int) -> bool:
        return THINK_CLOSE in tokenizer.decode(ids[:n], skip_special_tokens=False)

    if not ids or not prefix_has_close(len(ids)):
        return 0, None
    low, high = 1, len(ids)  # smallest n with the close tag inside ids[:n] (monotone in n)
    while low < high:
        mid = (low + high) // 2
        if prefix_has_close(mid):
            high = mid
        else:
            low = mid + 1
    rationale = tokenizer.decode(ids[:low], skip_special_tokens=False)
    rationale = rationale.split(THINK_CLOSE)[0].replace(THINK_OPEN, "").strip()
    start = low
    while start < len(ids) - 1 and not tokenizer.decode(ids[start : start + 1]).strip():
        start += 1  # blank lines between the rationale and the answer
    return start, rationale
