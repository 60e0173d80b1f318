# vfmigrate developer entry points (see README.md).  Everything runs as root.
PYTHON := .venv/bin/python

.PHONY: deps test unit demo demo-quick bench deb rpm release

deps:
	tests/install-deps

# Every test tier, with what each cost.
test: deps
	$(PYTHON) -m pytest

unit: deps
	$(PYTHON) -m pytest tests/unit

# A live migration with vfmigrate: in the SR-IOV lab when this machine can run it
# (10-15 min), else between namespaced libvirt hosts with simulated VFs (15 s).
demo: deps
	$(PYTHON) -m tests.lab.demo

# The namespaced one only.
demo-quick: deps
	$(PYTHON) -m tests.e2e.demo

bench: deps
	$(PYTHON) benchmarks/hook_latency.py
	$(PYTHON) benchmarks/listener_latency.py
	$(PYTHON) benchmarks/migration_overhead.py

deb:
	packaging/build deb

rpm:
	packaging/build rpm

# Both packages and dist/SHA256SUMS of the two; the version is vfmigrate/__init__.py's,
# which must be CHANGELOG.md's newest release (the packages' changelogs come from it).
release:
	packaging/build release
