# The two commands of the README (demo, test). Each builds (or reuses) the venv it needs.
SHELL := /bin/bash
.PHONY: demo test lint bench-losses venv

demo:
	@venv=$$(bash scripts/ensure-venv.sh) && export PYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" && \
	$$venv/bin/distill demo

test:
	@bash scripts/run-tests.sh

lint:
	@venv=$$(bash scripts/ensure-venv.sh) && $$venv/bin/ruff check . && PYTHONPATH=$(CURDIR) $$venv/bin/lint-imports --no-cache

bench-losses:
	@venv=$$(bash scripts/ensure-venv.sh) && $$venv/bin/python benchmarks/bench_losses.py

venv:
	@bash scripts/ensure-venv.sh
