# make run   : the default job (DC-ASGD-a, 8 simulated workers, Fashion-MNIST)
# make test  : the test suite without the slow experiment runs
# Both create .venv, install torch 2.13.0 (CPU) + the package, and make sure Fashion-MNIST is present.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN_OUT ?= runs/default

.PHONY: run test bench soak data install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,tensorboard]'
	touch $(STAMP)

data: $(STAMP)
	sh scripts/ensure-data.sh $(PY)

run: data
	$(PY) -m dcasgd train --out $(RUN_OUT) --overwrite

test: data
	$(PY) -m pytest -q -m "not slow"

bench: data
	$(PY) benchmarks/run_all.py

soak: data
	$(PY) -m pytest -q -m slow tests/test_soak.py

clean:
	rm -rf runs .pytest_cache
