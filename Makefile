# DduoMQ build and test entry points. `make test` is what CI runs.
CARGO ?= cargo

.PHONY: test fmt-check clippy unit e2e-operator run bench

test: fmt-check clippy unit e2e-operator

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Integration tests start the real broker binary, so build every binary first.
unit:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

# The operator against a real control plane in a network namespace (root).
e2e-operator:
	$(CARGO) build --workspace --bins
	DDUOMQ_E2E_TEST_BIN="$$(e2e/test-binary dduomq-operator operator_e2e)" e2e/run operator

run:
	$(CARGO) run -p dduomq-broker --bin dduomq-broker --release

bench:
	$(CARGO) bench -p dduomq-broker
