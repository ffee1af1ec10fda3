# tidemark developer commands. `make help` lists them.
CARGO ?= cargo
SAMPLES := $(shell find fixtures/samples -name '*.json' | sort)

.PHONY: help deps demo samples test fmt fmt-check clippy bench doc

help: ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

deps: ## Install the Debian packages the build needs (apt-get, as root or through sudo)
	scripts/install-deps.sh

demo: ## Replay the bundled attack scenarios through the correlator (scripts/demo.sh)
	scripts/demo.sh

samples: deps ## Decode every bundled real sample and print its normalized signals
	$(CARGO) run --quiet -p tidemark -- normalize $(SAMPLES)

test: ## Run every test of the workspace (scripts/test.sh)
	scripts/test.sh

fmt: ## Format the code
	$(CARGO) fmt --all

fmt-check: ## Fail if the code is not formatted
	$(CARGO) fmt --all -- --check

clippy: deps ## Lint every target, warnings as errors
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: deps ## Run the criterion benchmarks (release build)
	$(CARGO) bench -p tidemark-ingest --bench decode
	$(CARGO) bench -p tidemark-correlator --bench correlate

doc: ## Build the API documentation
	$(CARGO) doc --workspace --no-deps
