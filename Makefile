# make install: .venv with pinned versions (CPU machine friendly); make demo / make test install first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV := uv==0.13.9

.PHONY: install system-deps demo test lint bench docs docs-serve docs-images clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@# uv installs the pinned set in seconds; where uv cannot be had, pip does it (slower)
	($(BIN)/pip install --quiet $(UV) && $(BIN)/uv pip install --quiet \
	    --python $(BIN)/python -r requirements.lock) \
	  || $(BIN)/pip install --quiet --no-compile -r requirements.lock
	$(BIN)/pip install --quiet --no-compile --no-deps --no-build-isolation -e .
	@# Bytecode on all cores (pip compiles one file at a time). A file that does not compile
	@# (torch ships one in Python 3.12 syntax) is skipped, as pip skips it.
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $(STAMP)

# System packages the tests use (Fashion-MNIST, headless Chromium): apt-get where possible,
# otherwise it says what to install and the tests that need them skip.
system-deps:
	@bash .ci/system-deps

demo: install
	$(BIN)/python -m autoprune.demo

# Every test, the slow end-to-end ones included (marker `slow`: real Ray, MLflow, data; a
# two-node Ray cluster with an MLflow server and headless Chromium, tests/test_cluster_e2e.py),
# on two workers, each test module on one of them (its Ray or MLflow server starts once).
test:
	@# the venv and the system packages install side by side
	$(MAKE) --no-print-directory -j2 --output-sync=target install system-deps
	$(BIN)/python -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder tests --durations=15

lint: install
	$(BIN)/ruff check autoprune tests benchmarks
	$(BIN)/mypy autoprune

# The documentation site (MkDocs + Material, pinned in requirements.lock) into site/;
# --strict: a broken link, a missing page or a page left out of the nav fails the build.
# The reference pages are generated from the code at build time (docs/hooks/reference.py).
docs: install
	$(BIN)/mkdocs build --strict --clean

docs-serve: install
	$(BIN)/mkdocs serve --strict --dev-addr 127.0.0.1:8000

# The MLflow UI screenshots the docs show, as tests/test_cluster_e2e.py last took them
# (headless Chromium); commit docs/img/ui/ after checking them.
UI_SHOTS := experiments runs-table pareto-artifact trial-schedule
docs-images:
	for shot in $(UI_SHOTS); do cp runs/test-artifacts/cluster-e2e/$$shot.png docs/img/ui/; done

bench: install
	$(BIN)/python benchmarks/pruned_training_speed.py

clean:
	rm -rf $(VENV) build site *.egg-info
