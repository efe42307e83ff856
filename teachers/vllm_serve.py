"""vLLM's OpenAI server, letting score requests reuse the prefix cache (run by the vLLM venv).

Why: scoring asks for ``prompt_logprobs``, and vLLM then skips the prefix cache for the whole
request (``SamplingParams.skip_reading_prefix_cache`` defaults to True with prompt logprobs,
because cached positions get no logprob rows), so the teacher prompt that every sample of a
task shares is recomputed each time. The scorer needs rows only for the response, so a cached
prompt prefix costs it nothing. Two changes, for the vLLM version pinned in
scripts/vllm-requirements.txt (0.32.0):

  * a completion request whose ``vllm_xargs`` holds ``{"read_prefix_cache": 1}`` gets
    ``skip_reading_prefix_cache=False``; without it a request behaves as upstream;
  * the prompt-logprob buffer starts zeroed (upstream: ``torch.empty``), so the rows of cached
    positions, which are never computed, are zeros and not uninitialised memory that the
    server would detokenise and serialise.

The client (teachers/backends/vllm_server.py) reads ``usage.prompt_tokens_details.
cached_tokens`` (``--enable-prompt-tokens-details``) and keeps a result only when the cache
stopped before the last prompt token, whose hidden state predicts the first response token;
otherwise it asks again without the cache. This file imports nothing from the toolkit: it runs
in vLLM's own venv. vLLM's CPU engine starts its processes with ``spawn``, which imports this
file again as ``__mp_main__``, so the patches apply in the engine and worker processes too.

usage: <vllm venv>/bin/python teachers/vllm_serve.py <vllm serve arguments>
"""

from __future__ import annotations

import runpy
import sys

import torch
from vllm.entrypoints.openai.completion.protocol import CompletionRequest
from vllm.v1.outputs import LogprobsTensors

ENTRYPOINT = "vllm.entrypoints.openai.api_server"
READ_PREFIX_CACHE = "read_prefix_cache"  # the vllm_xargs key a request sets to 1


def _patch_request() -> None:
    upstream = CompletionRequest.to_sampling_params

    def to_sampling_params(self, *args, **kwargs):
        params = upstream(self, *args, **kwargs)
        extra = params.extra_args or {}
        if extra.pop(READ_PREFIX_CACHE, None):
            params.skip_reading_prefix_cache = False
        return params

    CompletionRequest.to_sampling_params = to_sampling_params


def _patch_prompt_logprob_buffer() -> None:
    def empty_cpu(num_positions: int, num_tokens_per_position: int) -> LogprobsTensors:
        shape = (num_positions, num_tokens_per_position)
        return LogprobsTensors(
            logprob_token_ids=torch.zeros(shape, dtype=torch.int32),
            logprobs=torch.zeros(shape, dtype=torch.float32),
            selected_token_ranks=torch.zeros(num_positions, dtype=torch.int32),
        )

    LogprobsTensors.empty_cpu = staticmethod(empty_cpu)


_patch_request()
_patch_prompt_logprob_buffer()

if __name__ == "__main__":
    if "--enable-prompt-tokens-details" not in sys.argv:  # the client's check needs the count
        sys.argv.append("--enable-prompt-tokens-details")
    # alter_sys=False keeps this file as __main__, which spawned engine processes re-import.
    runpy.run_module(ENTRYPOINT, run_name="__main__")
