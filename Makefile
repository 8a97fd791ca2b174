# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS := test,cli,plot,remote,tensorflow-cpu,dev
# `make demo` needs only the library, TensorFlow and the CLI's table: a newcomer's first command
# installs that, not the test and dev tools (`make test` adds them later).
DEMO_STAMP := $(VENV)/.installed-demo
DEMO_EXTRAS := cli,tensorflow-cpu

export TF_CPP_MIN_LOG_LEVEL := 2
export KERAS_BACKEND ?= tensorflow

# JAX and PyTorch: the callback and resume tests run again on each (the whole suite runs on
# TensorFlow). Same venv: tensorflow-cpu, jax and the torch CPU build install side by side.
BACKEND_STAMP := $(VENV)/.installed-backends
# With JAX, the sharded-checkpoint tests need orbax-checkpoint ([orbax]): they fail, never skip,
# when it is missing.
BACKEND_TESTS := tests/test_model_checkpoint.py tests/test_backup_and_restore.py tests/test_backends.py \
	tests/test_backup_file.py tests/test_backup.py tests/test_signals.py tests/test_h5write.py \
	tests/test_h5read.py tests/test_keras_file.py
SHARDED_TESTS := tests/test_orbax_dir.py tests/test_sharded_multiworker.py \
	tests/test_docs_pages.py::test_jax_blocks_run

# `make bench` adds the `bench` extra (orbax-checkpoint for Keras's OrbaxCheckpoint); the JAX it
# brings is pinned like the backends' (unpinned, it may not match the jaxlib already installed).
BENCH_STAMP := $(VENV)/.installed-bench

# The oldest Keras pyproject admits, in a venv of its own: format, callback and resume tests.
OLDEST_VENV := .venv-keras-oldest
OLDEST_STAMP := $(OLDEST_VENV)/.installed
OLDEST_TESTS := tests/test_snapshot.py tests/test_h5write.py tests/test_h5read.py \
	tests/test_keras_file.py tests/test_keras_private.py tests/test_fit_state.py \
	tests/test_model_checkpoint.py tests/test_backup_and_restore.py tests/test_backup_file.py \
	tests/test_backup.py tests/test_signals.py

.PHONY: test test-backends test-keras-oldest demo quickstart lint bench docs clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(DEMO_EXTRAS)]"
	touch $(DEMO_STAMP)

# Two workers (the machine has 2 cores); whole files per worker keep module fixtures shared.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

# constraints/backends.txt pins torch to the CPU build on local disk (unpinned: GBs of CUDA).
$(BACKEND_STAMP): $(STAMP) constraints/backends.txt
	$(PY) -m pip install --quiet -c constraints/backends.txt -e ".[$(EXTRAS),jax,orbax,torch]"
	touch $(BACKEND_STAMP)

test-backends: $(BACKEND_STAMP)
	KERAS_BACKEND=jax $(PY) -m pytest -q -n 2 --dist loadfile $(BACKEND_TESTS) $(SHARDED_TESTS)
	KERAS_BACKEND=torch $(PY) -m pytest -q -n 2 --dist loadfile $(BACKEND_TESTS)
	# The chief decision for JAX and PyTorch jobs (skipped by `make test`, which has neither).
	$(PY) -m pytest -q tests/test_distribute.py -k "jax or torch"

$(OLDEST_STAMP): pyproject.toml constraints/keras-oldest.txt
	test -x $(OLDEST_VENV)/bin/python || $(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST_VENV)/bin/python -m pip install --quiet -c constraints/keras-oldest.txt \
		-e ".[test,tensorflow-cpu]"
	touch $(OLDEST_STAMP)

test-keras-oldest: $(OLDEST_STAMP)
	$(OLDEST_VENV)/bin/python -m pytest -q -n 2 --dist loadfile $(OLDEST_TESTS)

# The documentation site (mkdocs.yml, docs/): --strict fails on a broken link or anchor and on
# an API reference that does not resolve. The docs extra goes into the same venv.
DOCS_STAMP := $(VENV)/.installed-docs

$(DOCS_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[docs]"
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

demo: $(DEMO_STAMP)
	$(PY) examples/resume_demo.py

quickstart: $(STAMP)
	$(PY) examples/quickstart.py

lint: $(STAMP)
	$(VENV)/bin/ruff check keras_ckpt tests benchmarks examples docs/tools
	$(VENV)/bin/ruff format --check keras_ckpt tests benchmarks examples docs/tools
	$(VENV)/bin/mypy keras_ckpt

$(BENCH_STAMP): $(STAMP) constraints/backends.txt
	$(PY) -m pip install --quiet -c constraints/backends.txt -e ".[$(EXTRAS),bench]"
	touch $(BENCH_STAMP)

# About 30 minutes on 2 cores: the must-reach table, bench.json and bench.png.
bench: $(BENCH_STAMP)
	$(PY) benchmarks/checksums.py
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) $(OLDEST_VENV) .pytest_cache build site *.egg-info
