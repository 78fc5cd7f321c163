# Set-up and the two front-door commands (see README):
#   make demo   installs what the listening runtime needs and classifies a generated song live on the CPU
#   make test   installs the dev/test extras too and runs the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Where a machine keeps local wheels (e.g. the CPU build of torch), pip should look there first.
FIND_LINKS := $(if $(wildcard /opt/wheels),--find-links /opt/wheels)
PIP := $(BIN)/python -m pip install -q $(FIND_LINKS)
DEMO := demo/demo.wav

.PHONY: setup setup-dev demo test

$(VENV)/.runtime: pyproject.toml tools/install-system.sh
	bash tools/install-system.sh
	$(PY) -m venv $(VENV)
	$(PIP) -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(PIP) -e '.[dev]'
	touch $@

setup: $(VENV)/.runtime

setup-dev: $(VENV)/.dev

$(DEMO): tools/make_demo.py | $(VENV)/.runtime
	$(BIN)/python tools/make_demo.py $(DEMO)

demo: $(VENV)/.runtime $(DEMO)
	$(BIN)/rtgenre listen --input $(DEMO) --realtime

test: $(VENV)/.dev
	$(BIN)/python -m pytest -ra
