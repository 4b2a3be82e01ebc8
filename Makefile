# Two commands for a fresh machine: `make demo` and `make test`. Each creates what it needs.
PY    ?= python3
VENV  ?= .venv
BIN   := $(VENV)/bin
STAMP := $(VENV)/.autoseg-installed

.PHONY: install demo test bench clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The pinned CPU wheel first: a bare `torch` requirement would pull several GB of CUDA packages.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/autoseg demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests $(TEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(BENCH_ARGS)

clean:
	rm -rf autoseg_demo build *.egg-info
