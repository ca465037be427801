# hsmbackup — every entry point a developer or CI needs. `make demo` and `make test` work on a
# fresh Debian machine as root: `deps` installs what pkg-config cannot find.
SHELL      := /bin/bash
SWIFT      ?= swift
BIN        := .build/debug/hsmbackup
APT_PKGS   := libssl-dev libarchive-dev libzstd-dev libarchive-tools pkg-config zstd
PC_LIBS    := libcrypto libarchive libzstd

.PHONY: deps build release demo test test-asan test-tsan samples interop clean

deps:
	@if pkg-config --exists $(PC_LIBS) && command -v bsdtar >/dev/null; then :; else \
	  echo "installing system packages: $(APT_PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

demo: build
	@bash scripts/demo.sh $(BIN)

# Runs the whole suite: the interop check against the official AWS Encryption SDK (both
# directions), then every XCTest; the runner's own summary, then one plain "N passed, N failed"
# line, are the last things printed.
test: deps
	$(SWIFT) build --build-tests
	bash scripts/interop/run.sh $(BIN)
	@set -o pipefail; $(SWIFT) test --skip-build --disable-swift-testing 2>&1 | tee .build/test.log \
	  | grep -vE "^Test Case .*(started|passed)"; rc=$$?; \
	  line=$$(grep -E "^\s*Executed [0-9]+ tests?, with [0-9]+ failures?" .build/test.log | tail -1); \
	  n=$$(echo "$$line" | sed -E "s/.*Executed ([0-9]+) tests?.*/\1/"); \
	  f=$$(echo "$$line" | sed -E "s/.*with ([0-9]+) failures?.*/\1/"); \
	  if [ -n "$$line" ]; then echo "tests: $$((n - f)) passed, $$f failed"; fi; exit $$rc

# Regenerates spec/vectors/inner and samples/ deterministically (fixed keys, seeds, randomness).
samples: build
	$(BIN) hsm generate-samples --vectors spec/vectors/inner --samples samples

# Interop with the official AWS Encryption SDK for Python, both directions (throwaway venv, PyPI).
interop: deps
	$(SWIFT) build --product hsmbackup
	bash scripts/interop/run.sh $(BIN)

# The suite under AddressSanitizer (LeakSanitizer on, with the XCTest/runtime suppressions),
# and the store's concurrency tests under ThreadSanitizer. Separate build folders.
test-asan: deps
	$(SWIFT) build --build-tests --sanitize=address --scratch-path .build-asan
	LSAN_OPTIONS=suppressions=$(CURDIR)/scripts/sanitizers/lsan.supp ASAN_OPTIONS=detect_leaks=1 \
	  $(SWIFT) test --skip-build --sanitize=address --scratch-path .build-asan --disable-swift-testing

test-tsan: deps
	$(SWIFT) build --build-tests --sanitize=thread --scratch-path .build-tsan
	$(SWIFT) test --skip-build --sanitize=thread --scratch-path .build-tsan --disable-swift-testing --filter "ProcessTests|CatalogTests|LocalObjectStoreTests"

clean:
	rm -rf .build .build-asan .build-tsan
