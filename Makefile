# Every target creates or reuses .venv itself, so a fresh clone needs only `make test` or `make demo`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install test lint typecheck pytest bench bench-quick mutate demo proto clean

$(STAMP): pyproject.toml
	@echo "Installing meshbreaker and its development tools into $(VENV) (once, or after pyproject.toml changes; about a minute)..."
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)
	@echo "Installed. To run meshbreaker and the demo yourself: . $(VENV)/bin/activate"

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check meshbreaker tests bench examples tools
	$(BIN)/ruff format --check meshbreaker tests bench examples tools

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -n 2 -q

test: lint typecheck pytest

bench: $(STAMP)
	@echo "make bench: every benchmark, in interleaved rounds; this takes several minutes (make bench-quick: a shorter smoke run)"
	$(BIN)/python -m bench

bench-quick: $(STAMP)
	@echo "make bench-quick: fewer rounds; the figures are noisier than make bench's"
	$(BIN)/python -m bench --quick

# Sampled mutation testing (tools/mutation/README.md): SEED=N redraws a given sample or resumes it;
# AREA=engine|adapters|control runs one area's mutants of it.
mutate: $(STAMP)
	@echo "make mutate: about 200 mutants of the engine, the adapters and the control plane, each run against its area's tests (under an hour on 2 cores; niced)"
	nice -n 10 $(BIN)/python tools/mutation/driver.py sample --src . $(if $(SEED),--seed $(SEED)) $(if $(AREA),--area $(AREA))

# DEMO_ARGS passes flags through: make demo DEMO_ARGS=--xds (python -m examples.banking --help).
demo: $(STAMP)
	@echo "make demo: starting the banking mesh (control plane, four services, gateway) under chaos; about two minutes"
	$(BIN)/python -m examples.banking $(DEMO_ARGS)

proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iprotos \
	  --plugin=protoc-gen-mypy=$(BIN)/protoc-gen-mypy \
	  --plugin=protoc-gen-mypy_grpc=$(BIN)/protoc-gen-mypy_grpc \
	  --python_out=. --grpc_python_out=. --mypy_out=. --mypy_grpc_out=. \
	  protos/meshbreaker/v1/control_plane.proto protos/meshbreaker/v1/mesh.proto \
	  protos/meshbreaker/v1/xds.proto
	$(BIN)/python -m examples.banking.gen_protos

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
