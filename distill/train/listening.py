"""Is the student hearing its audio? Its loss with another clip's audio, against its own.

Why: a student can lower its loss without hearing anything, since the answers' grammar alone is
worth most of it; the loss curve of a run that never listens looks like a slow one. Swapping
each validation clip's audio tokens for its batch neighbour's and scoring the same answers
says it directly: ``audio_gain``, the CE (nats per answer token) with the other clip's audio
minus the CE with its own. On the demo's 64 spoken test clips it ranged from 0.004 for a
student that never heard (WER 69.9 %) to 1.0-1.9 for students at 5.1-25.1 %
(docs/training.md, "Is the student hearing?").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def other_clips_audio(audio_embeds: torch.Tensor) -> torch.Tensor:
    """[B, A, H] -> each clip gets the audio tokens of the clip before it (the first gets the
    last's). A clip keeps its own token count: a longer neighbour is cut, a shorter one brings
    its padding. Needs B >= 2."""
    if audio_embeds.size(0) < 2:
        raise ValueError("swapping audio needs a batch of at least two clips")
    return audio_embeds.roll(1, dims=0)


class AudioGain:
    """Sums CE with own and with swapped audio over a validation pass; ``gain`` is their
    difference per answer token (NaN before any batch of two or more clips was added)."""

    def __init__(self):
        self.own = self.other = 0.0
        self.tokens = 0

    def add(self, own_logits: torch.Tensor, other_logits: torch.Tensor,
            labels: torch.Tensor) -> None:
        """Logits [N, V] of the same N answer tokens ``labels`` [N], with and without the clips'
        own audio."""
        self.own += float(F.cross_entropy(own_logits.float(), labels, reduction="sum"))
        self.other += float(F.cross_entropy(other_logits.float(), labels, reduction="sum"))
        self.tokens += labels.numel()

    @property
    def gain(self) -> float:
        return (self.other - self.own) / self.tokens if self.tokens else float("nan")


class ListeningWatch:
    """Says once when a validation at or after step ``after`` finds that the answers hardly
    depend on the audio (``audio_gain`` under ``threshold`` nats a token); ``observe`` returns
    the warning text then, else None."""

    def __init__(self, after: int = 200, threshold: float = 0.1):
        self.after, self.threshold = after, threshold
        self.warned = False

    def observe(self, step: int, gain: float) -> str | None:
        if self.warned or step < self.after or not gain < self.threshold:
            return None
        self.warned = True
        return (f"the student's answers hardly depend on its audio: another clip's audio "
                f"raises the validation loss by {gain:.3f} nats a token at step {step} "
                f"(under {self.threshold}); it answers from the prompt alone. Try another "
                f"train.seed or more model.qformer.num_attention_heads (docs/training.md, "
                f"'Is the student hearing?').")
