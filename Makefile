# The two commands of the README. Each builds (or reuses) the venv it needs.
SHELL := /bin/bash
.PHONY: demo test lint bench-losses venv

demo:
	@venv=$$(bash scripts/ensure-venv.sh) && export PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" && \
	$$venv/bin/distill validate recipes/*.yaml && \
	$$venv/bin/distill validate recipes/demo.yaml --plan && \
	echo && \
	echo "distill demo: the end-to-end demo (issue G) is not implemented yet." && \
	echo "This command validated every shipped recipe and printed the demo's plan; nothing was trained."

test:
	@bash scripts/run-tests.sh

lint:
	@venv=$$(bash scripts/ensure-venv.sh) && $$venv/bin/ruff check .

bench-losses:
	@venv=$$(bash scripts/ensure-venv.sh) && $$venv/bin/python benchmarks/bench_losses.py

venv:
	@bash scripts/ensure-venv.sh
