# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv with Python 3.11, install the CPU build of torch and attnspec into it.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0

.PHONY: install demo test clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/attnspec check examples/*.attn
	$(VENV)/bin/attnspec show examples/m02_natten2d.attn --sq 64
	$(VENV)/bin/attnspec demo

test: install
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) build dist *.egg-info
