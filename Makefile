# DduoMQ build and test entry points. `make test` is what CI runs.
CARGO ?= cargo

.PHONY: test fmt-check clippy unit run bench

test: fmt-check clippy unit

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Integration tests start the real broker binary, so build every binary first.
unit:
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace

run:
	$(CARGO) run -p dduomq-broker --bin dduomq-broker --release

bench:
	$(CARGO) bench -p dduomq-broker
