# make setup: create .venv (when missing or out of date) from pyproject.toml + constraints.txt
# make demo:  icam demo: synthetic brains → ICAM-reg → maps vs Grad-CAM/guided backprop → demo/report.html
# make test:  lint (ruff), types (mypy), then the test suite
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
	$(BIN)/icam demo --out demo

test: setup
	$(BIN)/ruff check
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n auto  # one process per core (pytest-xdist)

bench: setup
	$(BIN)/python benchmarks/train_step.py --modes fp32 fp32-cl
	$(BIN)/python benchmarks/squares.py
