# make setup: create .venv (when missing or out of date) from pyproject.toml + constraints.txt
# make demo:  a short ICAM training on the squares benchmark; prints validation accuracy and the run folder
# make test:  the test suite
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: setup demo test bench

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $@

demo: setup
	$(BIN)/icam train --config configs/squares-demo.yaml

test: setup
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/train_step.py --modes fp32 fp32-cl
	$(BIN)/python benchmarks/squares.py
