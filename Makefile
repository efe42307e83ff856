# The two commands of the README (demo, test). Each builds (or reuses) the venv it needs.
SHELL := /bin/bash
.PHONY: demo test lint bench-losses venv

# The demo's teacher is a vLLM server: its venv is built once (1.2-2.4 min, 3.4 GB) and cached.
# Where it cannot be built, the demo says so and scores with the transformers backend instead.
demo:
	@venv=$$(bash scripts/ensure-venv.sh) && export PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" && \
	{ bash scripts/ensure-vllm-venv.sh >/dev/null || \
	  echo "make demo: the vLLM venv could not be built (above); the teacher runs in-process" >&2; } && \
	$$venv/bin/distill demo

test:
	@bash scripts/run-tests.sh

lint:
	@venv=$$(bash scripts/ensure-venv.sh) && $$venv/bin/ruff check . && PYTHONPATH=$(CURDIR) $$venv/bin/lint-imports --no-cache

bench-losses:
	@venv=$$(bash scripts/ensure-venv.sh) && $$venv/bin/python benchmarks/bench_losses.py

venv:
	@bash scripts/ensure-venv.sh
