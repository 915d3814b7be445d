# The two quickstart commands (see README.md):
#   make serve   install explorank and serve the default bundle over gRPC on localhost:50051
#   make test    install explorank with its test dependencies, lint, type-check, run the tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/python -m pip
# The stub generator (grpcio-tools 1.72.1 writes gencode 6.30.0) needs protobuf < 7: own venv.
PROTO_VENV ?= .venv-proto

.PHONY: serve test install install-dev lint typecheck pytest proto clean

# scripts/install.sh is the one install path: here (so in CI) and in deploy/Dockerfile*.
install:
	PYTHON=$(PYTHON) scripts/install.sh $(VENV) export,demo,redis --editable

install-dev:
	PYTHON=$(PYTHON) scripts/install.sh $(VENV) export,demo,redis,dev --editable

serve: install
	$(BIN)/explorank serve

lint:
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck:
	$(BIN)/mypy explorank engine plugins export benchmarks

pytest:
	$(BIN)/pytest

test: install-dev lint typecheck pytest

$(PROTO_VENV)/bin/python:
	$(PYTHON) -m venv $(PROTO_VENV)
	$(PROTO_VENV)/bin/python -m pip install -q --upgrade pip
	$(PROTO_VENV)/bin/python -m pip install -q "grpcio-tools==1.72.1"

proto: $(PROTO_VENV)/bin/python
	PATH=$(PROTO_VENV)/bin:$$PATH proto/generate.sh

clean:
	rm -rf build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
