# hsmbackup — every entry point a developer or CI needs. `make demo` and `make test` work on a
# fresh Debian machine as root: `deps` installs what pkg-config cannot find.
SHELL      := /bin/bash
SWIFT      ?= swift
BIN        := .build/debug/hsmbackup
APT_PKGS   := libssl-dev libarchive-dev libzstd-dev libarchive-tools pkg-config zstd
PC_LIBS    := libcrypto libarchive libzstd

.PHONY: deps build release demo test samples interop clean

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

clean:
	rm -rf .build

# Fuzzing (issue 8; scripts/fuzz/README.md). `fuzz` builds the libFuzzer runner with the fuzzer
# and address sanitizers (.build-fuzz) and runs every target for FUZZ_SECONDS each, one after
# another on one core. `fuzz-smoke` replays the committed corpus and a fixed set of mutations
# through the same target functions via XCTest (no sanitizer build, well under a minute); the
# same tests run in `make test`. `fuzz-smoke-libfuzzer` is the short libFuzzer run (build ~1 min).
FUZZ_SECONDS ?= 600

.PHONY: fuzz fuzz-smoke fuzz-smoke-libfuzzer fuzz-seeds
fuzz: deps
	bash scripts/fuzz/build.sh
	bash scripts/fuzz/run.sh $(FUZZ_SECONDS)

fuzz-smoke: deps
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build --disable-swift-testing --filter FuzzTargetsTests

fuzz-smoke-libfuzzer: deps
	bash scripts/fuzz/build.sh
	bash scripts/fuzz/run.sh 3

# Regenerates fuzz/corpus (seed files) from the vectors, samples and fixed keys.
fuzz-seeds: deps
	bash scripts/fuzz/seeds.sh
