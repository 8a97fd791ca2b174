# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := test,cli,plot,remote,tensorflow-cpu,dev

export TF_CPP_MIN_LOG_LEVEL := 2
export KERAS_BACKEND ?= tensorflow

.PHONY: test demo quickstart lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) examples/resume_demo.py

quickstart: $(STAMP)
	$(PY) examples/quickstart.py

lint: $(STAMP)
	$(VENV)/bin/ruff check keras_ckpt tests benchmarks examples
	$(VENV)/bin/mypy keras_ckpt

bench: $(STAMP)
	$(PY) benchmarks/checksums.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
