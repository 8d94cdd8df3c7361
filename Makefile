# Two commands do all set-up: `make demo` runs the main job on the embedded default (CPU, no download),
# `make test` runs the test suite. Both create .venv when it is missing and are quick when it exists.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hysquant-installed

.PHONY: demo test bench clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	# torch first, pinned: this machine installs these two from disk (a plain `torch` may pull GBs)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hysquant-search

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/hysquant-bench

clean:
	rm -rf $(VENV) outputs/*/ *.egg-info
