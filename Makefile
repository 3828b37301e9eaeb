# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv with Python 3.11, install the CPU build of torch and attnspec into it.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
# Where pip would otherwise fetch a CUDA build of torch, point it at the CPU wheels, e.g.
#   make test TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: install demo test fuzz explore aot-sweep gpu-check snapshots clean

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/attnspec check examples/*.attn
	$(VENV)/bin/attnspec show examples/m02_natten2d.attn --sq 64
	$(VENV)/bin/attnspec demo

test: install
	$(PY) -m pytest -q

# The property tests (Hypothesis) with freshly drawn examples; `make test` draws the same ones every run.
explore: install
	HYPOTHESIS_PROFILE=explore $(PY) -m pytest -q tests/test_simplify.py tests/test_passes.py tests/test_roundtrip.py \
		tests/test_bands.py tests/test_tiles.py tests/test_fuzz_specgen.py tests/test_flex_blockmask.py

# A longer fuzz run than the test suite's (docs/fuzz.md): every example on every target, gradients too
# (--grad; on the CPU, flex's through FlexAttention's dense definition), random specs and corrupted
# text. About two hours on two CPU cores; FUZZ_TRIALS=10 for a quicker pass.
FUZZ_TRIALS ?= 50
fuzz: install
	$(VENV)/bin/attnspec fuzz examples/*.attn --trials $(FUZZ_TRIALS) --generate 200 --grad
	$(VENV)/bin/attnspec fuzz examples/*.attn --mutate 2000

# Rewrite the generated-code snapshots under tests/snapshots (every example, every target) after a
# deliberate change to templates, renderers or passes; review the result with `git diff`.
snapshots: install
	$(PY) tests/snapshots.py

# Every example's triton kernels compiled for sm_80 and sm_90a without a GPU, every autotune candidate,
# bf16, fp16 and fp32, forward and backward (docs/triton.md, attnspec aot): the report is written to
# aot-sweep.json. The tests compile the default candidates only. About an hour on two CPU cores.
aot-sweep: install
	env -u TRITON_INTERPRET $(VENV)/bin/attnspec aot examples/*.attn --all-candidates --backward \
		--arch sm_90a --arch sm_80 --dtype bf16 --dtype fp16 --dtype fp32 -j 2 --json aot-sweep.json

# On a machine with a CUDA GPU and the dependencies installed (GPU_PYTHON, default python3): the GPU
# tests of the flex and triton targets (forward, gradients, training), then the triton benchmarks, forward
# and backward, which update benchmarks/RESULTS.md.
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) -m pytest -q -m cuda tests/test_triton_gpu.py tests/test_flex_gpu.py tests/test_train_example.py
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) benchmarks/triton_attention.py --write
	PYTHONPATH=$(CURDIR) $(GPU_PYTHON) benchmarks/triton_backward.py --write

clean:
	rm -rf $(VENV) build dist *.egg-info
