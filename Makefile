# Two commands set everything up on a fresh machine (see README.md):
#   make demo   creates .venv and runs the main job (routevit bench)
#   make test   runs the test suite in that same environment
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch first, pinned to the build this machine kind carries on disk (a bare `torch`
# requirement would pull a multi-GB CUDA build from the registry).
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: env demo test lint docs clean

$(BIN)/routevit: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/routevit

env: $(BIN)/routevit

demo: env
	$(BIN)/routevit bench

test: env
	$(BIN)/python -m pytest -q

lint: env
	$(BIN)/ruff check routevit tests docs/scripts

docs: env
	$(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) site .pytest_cache .hypothesis
