# Everything a newcomer needs: `make demo` and `make test` each build .venv from nothing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# ONNX Runtime: exactly one build. A machine with nvidia-smi gets onnxruntime-gpu.
ORT_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)

.PHONY: setup test demo play lint bench model clean

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned, so nothing later can pull a CUDA build in its place.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[$(ORT_EXTRA),dev]"
	touch $@

setup: $(BIN)/.installed

test: setup
	$(BIN)/ruff check .
	SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy $(BIN)/python -m pytest -q

# One torch thread: a one-world rollout is many small ops, and on a busy 2-core machine a
# second OpenMP thread mostly spins (docs/model.md).
demo: setup
	SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy $(BIN)/worldsim demo --out demo --threads 1

# Reproduce the shipped model from nothing (record, tokenizer, decoder, dynamics; about
# 6 h 25 min on the project's 2-vCPU machine, minutes on a GPU) and install it as the
# package default. Resumable: run it again after an interruption.
model: setup
	$(BIN)/worldsim train recipe blockworld-64 --dir runs/blockworld-64 --install

play: setup
	$(BIN)/worldsim play

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/worldsim bench engine

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
