# evit_ros developer entry points. `make demo` and `make test` are the two commands a new user needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: venv demo test lint typecheck py310 pytest clean bench

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt tools/install_trt_stubs.sh tools/make_cuda_stubs.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	bash tools/install_trt_stubs.sh $(PY)
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m evit_ros demo

test: lint py310 typecheck pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check evit_ros tests launch setup.py

py310: $(STAMP)
	$(VENV)/bin/vermin --no-tips --violations --eval-annotations --target=3.10- evit_ros launch setup.py

typecheck: $(STAMP)
	$(VENV)/bin/mypy --config-file mypy.ini

pytest: $(STAMP)
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) -m evit_ros bench --model efficientvit-seg-b0-cityscapes --backend onnxruntime --height 512 --width 1024 --json bench.json

clean:
	rm -rf build install log .pytest_cache .mypy_cache .ruff_cache demo_out
