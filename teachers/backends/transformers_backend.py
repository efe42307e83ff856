"""Teacher in-process with transformers: any causal LM, top-k from the full log-softmax.

Why keep it beside vLLM: small teachers need no server, and it is the independent reference
that the vLLM backends are checked against (same model, same ids: same top-k). One sample at a
time, in float32 log-softmax; slow, but exact and simple.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distill.data.dtypes import torch_dtype
from teachers.backends.base import (
    GenerationSettings,
    TeacherBackend,
    TeacherRequest,
    TeacherResult,
)


class TransformersBackend(TeacherBackend):
    name = "transformers"
    max_in_flight = 1

    def __init__(
        self,
        model: Any,
        logprob_mode: str = "raw_logprobs",
        max_model_len: int | None = None,
    ):
        import torch

        self.torch = torch
        self.model = model.eval()
        self.logprob_mode = logprob_mode
        self._max_len = max_model_len

    @classmethod
    def load(
        cls,
        name_or_path: str,
        revision: str | None = None,
        gguf_file: str | None = None,
        dtype: str = "float32",
        device: str | None = None,
        logprob_mode: str = "raw_logprobs",
        max_model_len: int | None = None,
    ) -> TransformersBackend:
        import torch
        from transformers import AutoModelForCausalLM

        kwargs: dict[str, Any] = {"revision": revision}
        if gguf_file:
            kwargs["gguf_file"] = gguf_file
        kwargs["dtype"] = "auto" if dtype in (None, "auto") else torch_dtype(dtype)
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(model.to(device), logprob_mode=logprob_mode, max_model_len=max_model_len)

    @classmethod
    def from_config(cls, teacher) -> TransformersBackend:
        return cls.load(
            teacher.model,
            revision=teacher.revision,
            gguf_file=teacher.gguf_file,
            dtype=teacher.server.dtype if teacher.server.dtype != "auto" else "float32",
            logprob_mode=teacher.logprob_mode,
            max_model_len=teacher.server.max_model_len,
        )

    @property
    def max_model_len(self) -> int | None:
        return self._max_len

    @property
    def device(self):
        return next(self.model.parameters()).device

    async def score(self, request: TeacherRequest, k: int) -> TeacherResult:
        return self.score_sync(request, k)

    async def generate(
        self, request: TeacherRequest, k: int, settings: GenerationSettings
    ) -> TeacherResult:
        return self.generate_sync(request, k, settings)

    def score_sync(self, request: TeacherRequest, k: int) -> TeacherResult:
        torch = self.torch
        response = list(request.response_ids or [])
        if not response:
            raise ValueError("score mode needs response ids (the student's target)")
        ids = torch.tensor([[*request.prompt_ids, *response]], device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=ids).logits[0]
        start = len(request.prompt_ids) - 1  # logits at position i predict token i + 1
        rows = logits[start : start + len(response)].float()
        topk_ids, topk_logprobs = self._topk(torch.log_softmax(rows, dim=-1), k)
        return TeacherResult(request.sample_id, np.asarray(response, np.int64), topk_ids, topk_logprobs)

    def generate_sync(
        self, request: TeacherRequest, k: int, settings: GenerationSettings
    ) -> TeacherResult:
        torch = self.torch
        prompt = torch.tensor([request.prompt_ids], device=self.device)
        sample = settings.temperature > 0
        torch.manual_seed(request.seed)
        stop = settings.stop_ids or None
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=prompt,
                attention_mask=torch.ones_like(prompt),
                max_new_tokens=settings.max_new_tokens,
                do_sample=sample,
                temperature=settings.temperature if sample else None,
                top_p=None,
                top_k=None,
                eos_token_id=stop,
                pad_token_id=(stop or [0])[0],
                return_dict_in_generate=True,
                output_logits=True,
                output_scores=True,
            )
        tokens = out.sequences[0, prompt.shape[1] :]
        # Raw: the model's logits; processed: after temperature and the other logits processors.
        steps = out.scores if self.logprob_mode == "processed_logprobs" else out.logits
        rows = torch.cat([step[:1].float() for step in steps])[: len(tokens)]
        topk_ids, topk_logprobs = self._topk(torch.log_softmax(rows, dim=-1), k)
        token_list = tokens.tolist()
        finished = bool(stop) and bool(token_list) and token_list[-1] in stop
        return TeacherResult(
            request.sample_id,
            np.asarray(token_list, np.int64),
            topk_ids,
            topk_logprobs,
            finish_reason="stop" if finished else "length",
        )

    def _topk(self, logprobs, k: int) -> tuple[np.ndarray, np.ndarray]:
        values, ids = self.torch.topk(logprobs, k, dim=-1)
        return ids.cpu().numpy().astype(np.int64), values.cpu().numpy().astype(np.float32)
