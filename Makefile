PYTHON ?= .venv/bin/python
PIP ?= .venv/bin/pip

.PHONY: install test proto lint bench demo clean

install:
	python3 -m venv .venv
	$(PIP) install -e '.[test,dev]'

test:
	$(PYTHON) -m pytest -q

proto:
	$(PYTHON) -m grpc_tools.protoc -Iproto --python_out=ristretto_cli/proto --pyi_out=ristretto_cli/proto proto/caffe.proto

lint:
	$(PYTHON) -m ruff check ristretto_cli tests benchmarks scripts

bench:
	$(PYTHON) benchmarks/run_all.py

clean:
	rm -rf build dist *.egg-info .pytest_cache
