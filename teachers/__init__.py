"""Teacher service: prompts, backends (vLLM server, vLLM offline, transformers) and the soft-target cache."""
