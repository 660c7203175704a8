# tunekit developer commands. `make quickstart` and `make test` install into .venv first.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU-only machines pin torch 2.13.0 (a CPU build, no CUDA wheels); GPU machines get the normal CUDA build.
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo torch || echo torch==2.13.0)
PYTEST_ARGS ?=

.PHONY: install constraints quickstart test test-full test-all lint typecheck data tokenizer bench bench-tiny clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $@

# constraints: record the installed versions (after the tests passed with them) as constraints.txt
constraints:
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze | grep -viE '^(tunekit|-e |torch==|nvidia|triton|# )'; } > constraints.tmp
	mv constraints.tmp constraints.txt

quickstart: install
	$(BIN)/tunekit train recipes/quickstart.yaml --overwrite

# test: the fast default set (pyproject's addopts: not slow, not full), every area covered, a few minutes on 2 cores.
# test-full: only the `full` tests (the core of the 2-process parity matrix, the rest of the all-methods matrix,
#   learning-signal tests); CI runs `test` then `test-full`, so nothing runs twice.
# test-all: everything, `slow` included (by hand: the rest of the parity matrix, signals across processes, bench).
test: install
	$(BIN)/pytest $(PYTEST_ARGS)

test-full: install
	$(BIN)/pytest -m "full and not slow" $(PYTEST_ARGS)

test-all: install
	$(BIN)/pytest -m "" $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .

typecheck: install
	$(BIN)/mypy tunekit

# bench: training throughput / memory / MFU of tunekit vs TRL (and Unsloth) on a CUDA GPU (docs/performance.md);
# bench-tiny: the same harness on builtin shapes on CPU (about a minute on 2 idle cores).
bench: install
	$(BIN)/python scripts/bench_train.py $(BENCH_ARGS)

bench-tiny: install
	$(BIN)/python scripts/bench_train.py --tiny $(BENCH_ARGS)

data: install
	$(BIN)/python scripts/make_quickstart_data.py

tokenizer: install
	$(BIN)/python scripts/make_tokenizer.py

clean:
	rm -rf $(VENV) runs .pytest_cache
