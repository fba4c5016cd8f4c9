# Two commands on a fresh machine: `make demo` and `make test` (both create .venv first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint test-all test-browser browser-deps bench clean

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

# ruff, configured in pyproject.toml: pyflakes, pycodestyle (120 columns), import order, imports at top
lint: $(STAMP)
	$(BIN)/ruff check .

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m "" 

# the real-browser test of `volseg serve`: Debian's chromium (apt, as root or through sudo) and Playwright's
# Python package pointed at it -- never `playwright install`, which downloads a browser build
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser-deps: $(STAMP)
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test,ray,browser]'

test-browser: browser-deps
	$(BIN)/python -m pytest -q -m browser tests/test_serve_browser.py

bench: $(STAMP)
	$(BIN)/python benchmarks/segment_256.py

clean:
	rm -rf $(VENV) volseg-demo .pytest_cache
