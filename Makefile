# erasekit: the two set-up commands are `make demo` and `make test`; both create .venv when missing.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
# torch/torchvision: this pair installs offline on the build machines; pyproject keeps the range open for users.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.erasekit-installed

# No test or demo ever reaches for the network.
OFFLINE := HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 \
           HF_HOME=$(CURDIR)/.cache/hf TORCH_HOME=$(CURDIR)/.cache/torch

.PHONY: venv demo test test-slow test-install bench clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(OFFLINE) $(PY) -m erase.demo --out demo-out

test: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q

test-slow: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q -m slow

# a regular `pip install .` (the wheel, not this checkout) runs SalUn and the demo from another directory
test-install: $(STAMP)
	$(OFFLINE) $(PY) -m pytest -q -m slow tests/test_install.py

# canvas-mini: every method vs the gold retrained model (README table, bench/results/canvas-mini.*), many concepts
# at once (bench/results/many.*), the evaluation / classification / erase micro-benchmarks (bench/results/run-cpu.json)
# and the fault measurements (bench/results/faults.json)
bench: $(STAMP)
	$(OFFLINE) $(PY) -m bench.canvas_mini --readme
	$(OFFLINE) $(PY) -m bench.many --lists styles,objects,mixed
	$(OFFLINE) $(PY) -m bench.many_pictures --list styles --k 9
	$(OFFLINE) $(PY) -m bench.run
	$(OFFLINE) $(PY) -m bench.faults

clean:
	rm -rf $(VENV) .cache demo-out .pytest_cache
