# Two entry points for a fresh machine: `make dashboard` and `make test`.
# Both install requirements.lock (exact versions, with hashes); requirements.txt keeps the ranges
# for people who embed the package, and `make lock` turns those ranges into a new lock.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements.lock
# torch 2.14.1 is the newest build whose wheels lie on these machines' disk (pip is capped there);
# a newer one is a 3 GB download on every fresh machine. Move both together when moving on.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
LOCK_VENV := .venv-lock

.PHONY: setup dashboard test lint bench lock

$(STAMP): $(LOCK) pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q pip==26.3
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

setup: $(STAMP)

# Where this checkout's machines keep the FairFace sample; the dashboard registers it as an evaluation set
# ($AGEGENDER_FAIRFACE, when set, wins; elsewhere set fairface_sample in .streamlit/secrets.toml)
FAIRFACE_SAMPLE := $(wildcard ../shared/datasets/FairFace-sample)

# python -m dashboard: streamlit run dashboard/app.py, warming the first page's caches while the server starts
dashboard: setup
	$(if $(FAIRFACE_SAMPLE),AGEGENDER_FAIRFACE="$${AGEGENDER_FAIRFACE:-$(abspath $(FAIRFACE_SAMPLE))}") \
		$(BIN)/python -m dashboard

lint: setup
	$(BIN)/ruff check .

# AGEGENDER_LOCKED: tests/test_install.py checks the environment holds exactly the locked versions
test: lint
	AGEGENDER_LOCKED=$(LOCK) $(BIN)/python -m pytest --durations=15

bench: setup
	$(BIN)/python -m benchmarks.train

# Re-resolve every package to its newest release within requirements*.txt (torch as TORCH_PINS),
# for CPython 3.11 on Linux x86_64, the platform the lock is tested on. Takes about 10 minutes:
# pip-compile hashes every wheel it pins.
lock:
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q pip==26.3 pip-tools==7.6.2
	$(LOCK_VENV)/bin/pip-compile --quiet --upgrade --generate-hashes --allow-unsafe --strip-extras \
		--no-emit-index-url --no-emit-find-links $(foreach p,$(TORCH_PINS),--upgrade-package '$(p)') \
		--output-file $(LOCK) requirements.txt requirements-dev.txt
