# DduoMQ build and test entry points. `make test` is what CI runs.
CARGO ?= cargo

.PHONY: test fmt-check clippy bins rocketmq-clients unit e2e-operator e2e-cluster bench-smoke run bench fuzz sim soak

test: fmt-check clippy unit e2e-operator e2e-cluster bench-smoke

# The load generator is its own workspace (rdkafka builds librdkafka).
LOADGEN = --manifest-path bench/loadgen/Cargo.toml
LOADGEN_TARGET = CARGO_TARGET_DIR=$$HOME/.cache/dduomq-bench-target

fmt-check:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt $(LOADGEN) -- --check
	$(CARGO) fmt --manifest-path rocketmq-clients/rust/Cargo.toml -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p dduomq-operator --test operator_e2e -- -D warnings
	$(CARGO) clippy -p dduomq-e2e --test cluster -- -D warnings
	$(LOADGEN_TARGET) $(CARGO) clippy $(LOADGEN) --release -- -D warnings

# Integration and end-to-end tests start the real binaries: build them first.
bins:
	$(CARGO) build --workspace --bins

# The official RocketMQ clients the compatibility tests drive (from the
# package registries, into ~/.cache/dduomq-rocketmq).
rocketmq-clients:
	rocketmq-clients/setup

unit: bins rocketmq-clients
	$(CARGO) test --workspace

# The operator against a real control plane in a network namespace (root).
e2e-operator: bins
	DDUOMQ_E2E_TEST_BIN="$$(e2e/test-binary dduomq-operator operator_e2e)" e2e/run operator

# The full cluster: helm install on the control plane with the Rust test kubelet
# (pods as processes), then the scenarios of e2e/tests/cluster/ (all of them, or
# those whose test names match SCENARIO, e.g. `make e2e-cluster SCENARIO=scale_in`).
e2e-cluster: bins rocketmq-clients
	DDUOMQ_E2E_TEST_BIN="$$(e2e/test-binary dduomq-e2e cluster)" e2e/run cluster $(SCENARIO)

# The soak (not part of `make test`): the replicated installation of the cluster
# scenarios under continuous produce and consume, a master SIGKILLed every
# SOAK_KILL_EVERY_S seconds, for SOAK_MINUTES; prints lost, duplicated, failover
# times and broker RSS (also in the work dir's cluster-report.json).
SOAK_MINUTES ?= 30
SOAK_KILL_EVERY_S ?= 60
soak: bins
	DDUOMQ_SOAK_MINUTES=$(SOAK_MINUTES) DDUOMQ_SOAK_KILL_EVERY_S=$(SOAK_KILL_EVERY_S) \
		DDUOMQ_E2E_TEST_BIN="$$(e2e/test-binary dduomq-e2e cluster)" e2e/run cluster --ignored soak

# A short pass of the side-by-side benchmark (DduoMQ, NATS JetStream, Kafka):
# proves the harness, the peers and every driver work; `bench/run` is the full
# run that writes bench/RESULTS.md.
bench-smoke:
	bench/run --smoke

run:
	$(CARGO) run -p dduomq-broker --bin dduomq-broker --release

# The election-safety simulation over many more seeded fault schedules than
# `cargo test` runs (replay one failing seed with SIM_SCHEDULES=1 SIM_SEED=<seed>;
# SIM_VARIANT names a deliberately broken rule set, see replication/tests/sim/).
SIM_SCHEDULES ?= 100000
SIM_SEED ?= 0
SIM_VARIANT ?= correct
sim:
	$(CARGO) run --release -p dduomq-replication --example election_sim -- \
		--schedules $(SIM_SCHEDULES) --seed $(SIM_SEED) --variant $(SIM_VARIANT)

# Storage-engine microbenchmarks (criterion).
bench:
	$(CARGO) bench -p dduomq-broker

# Each fuzz target for FUZZ_SECONDS (libFuzzer: nightly and `cargo install
# cargo-fuzz`); not part of `make test`. New inputs go to fuzz/work/, so the
# committed seeds in fuzz/corpus/ (which `make test` replays) stay as they are.
FUZZ_SECONDS ?= 600
FUZZ_TARGETS = filter record auth
fuzz:
	for target in $(FUZZ_TARGETS); do \
		mkdir -p fuzz/work/$$target && \
		$(CARGO) +nightly fuzz run $$target fuzz/work/$$target fuzz/corpus/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -max_len=32768 -timeout=10 || exit 1; \
	done
