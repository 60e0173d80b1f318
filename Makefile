# vfmigrate developer entry points (see README.md).
PYTHON := .venv/bin/python

.PHONY: deps test unit bench

deps:
	tests/install-deps

# Every test tier, with what each cost.
test: deps
	$(PYTHON) -m pytest

unit: deps
	$(PYTHON) -m pytest tests/unit

bench: deps
	$(PYTHON) benchmarks/hook_latency.py
