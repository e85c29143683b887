# Two commands for a fresh clone: `make demo` and `make test`.
# Every pip call passes constraints.txt so torch stays the CPU build pinned there.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONSTRAINTS := constraints.txt
# Users elsewhere pick their own torch build, e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
DEMO_CORPUS := sample_corpus/build
DEMO_INDEX := .cache/demo-index
export MMSEARCH_HOME ?= $(CURDIR)/.cache/home

.PHONY: install demo test lint bench clean sample-corpus default-model

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet $(TORCH_SPEC)
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[dev,server]'
	touch $(STAMP)

sample-corpus: $(STAMP)
	$(PY) sample_corpus/generate.py --out $(DEMO_CORPUS)

demo: sample-corpus
	$(PY) -m mmsearch.demo --corpus $(DEMO_CORPUS) --db $(DEMO_INDEX)

# Retrains the committed default model from the sample corpus (deterministic seed).
default-model: sample-corpus
	$(PY) -m mmsearch.cli train --corpus $(DEMO_CORPUS)/corpus.jsonl \
	    --out indexer/default_model --config sample-shapes --seed 0 --epochs 16
	rm -rf indexer/default_model/last

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check indexer mmsearch tests benchmarks sample_corpus
	$(PY) -m mypy

bench: sample-corpus
	$(PY) benchmarks/run.py --out benchmarks/RESULTS.md

clean:
	rm -rf $(VENV) .cache $(DEMO_CORPUS) .pytest_cache
