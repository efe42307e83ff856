"""Teacher service: prompts, backends (vLLM server, vLLM offline, transformers) and the soft-target cache.

Modules, one job each:
  prompts.py      privileged text per task -> the teacher's chat-template prompt ids
  fingerprint.py  teacher and student must mean the same tokens by the same ids
  backends/       score / generate with top-k logprobs behind one interface (base.py)
  server.py       serve-teacher: vLLM's OpenAI server as a child process
  generate.py     generate-teacher: manifests -> teacher -> cache, resumable
  cache/          the on-disk format (README.md), writer, reader, verify
  config.py       the recipe's ``teacher`` section (its commands are in distill/teacher_cli.py)

The trainer needs only ``teachers.cache.open_cache(dir).get(sample_id)``.
"""
