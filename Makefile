PYTHON ?= .venv/bin/python
PIP ?= .venv/bin/pip

.PHONY: install test proto lint bench demo demo-clean clean

# `make demo`: the LeNet/MNIST walk-through (scripts/demo.py) into out/demo/.
# `make demo DEMO_ARGS=--quick`: the same with fewer iterations (CI).
DEMO_ARGS ?=

install:
	python3 -m venv .venv
	$(PIP) install -e '.[test,dev]'

test:
	$(PYTHON) -m pytest -q

proto:
	$(PYTHON) -m grpc_tools.protoc -Iproto --python_out=ristretto_cli/proto --pyi_out=ristretto_cli/proto proto/caffe.proto

lint:
	$(PYTHON) -m ruff check ristretto_cli tests benchmarks scripts

demo:
	@test -x $(PYTHON) || { echo "make demo: $(PYTHON) not found; do the README's set-up first:" \
		"python3 -m venv .venv && .venv/bin/pip install -e '.[test]'" >&2; exit 1; }
	$(PYTHON) scripts/demo.py $(DEMO_ARGS)

demo-clean:
	rm -rf out/demo

bench:
	$(PYTHON) benchmarks/run_all.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
