# Two commands on a fresh machine: `make demo` and `make test` (both create .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-all bench clean

$(STAMP): pyproject.toml constraints.txt setup.py volseg/gp/_fused.c volseg/gp/_fused_rbf.h
	$(PYTHON) -m venv $(VENV)
	# constraints.txt pins torch to the local CPU wheel; the library itself only asks for torch>=2.1
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,ray]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/volseg demo --out volseg-demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "" 

bench: $(STAMP)
	$(BIN)/python benchmarks/segment_256.py

clean:
	rm -rf $(VENV) volseg-demo .pytest_cache
