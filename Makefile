PYTHON ?= .venv/bin/python

.PHONY: proto test bench run

# The one command that regenerates the protobuf and gRPC code in proto/caxton
# (needs the dev extra: pip install -e '.[dev]').
# Generated *_pb2*.py files are committed and never edited by hand.
proto:
	$(PYTHON) -m grpc_tools.protoc -I proto \
		--python_out=proto --pyi_out=proto --grpc_python_out=proto \
		proto/caxton/v1/caxton.proto proto/caxton/internal/v1/worker.proto

test:
	.ci/run

# Benchmarks (bench/README.md): start their own supervisor and baselines;
# CAXTON_BENCH_QUICK=1 skips the 200-agent memory step.
bench:
	mkdir -p bench/results
	$(PYTHON) -m pytest bench -q -p no:cacheprovider \
		--benchmark-json=bench/results/latest.json \
		--benchmark-columns=min,median,mean,max,rounds,iterations --benchmark-sort=name

run:
	$(PYTHON) -m caxton.supervisor --deploy-examples
