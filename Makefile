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

# The main job on the embedded digits model, on this CPU's runtime (onnxruntime) in its executable space: the fastest
# policy within 0.5 points of FP32's search-val top-1 and at most 0.85x FP32's latency, measured side by side with
# FP32 and onnxruntime's own quantize_static int8 (summary.md, summary.png in the run directory).
demo: $(STAMP)
	$(VENV)/bin/hysquant-search hardware=cpu hardware.backend=onnxruntime hardware.batch_size=32 \
		budget=accuracy budget.max_drop=0.5 budget.latency_ratio=0.85

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q

bench: $(STAMP)
	$(VENV)/bin/hysquant-bench

clean:
	rm -rf $(VENV) outputs/*/ *.egg-info
