# hsmbackup — every entry point a developer or CI needs. `make demo` and `make test` work on a
# fresh Debian machine as root: `deps` installs what pkg-config cannot find.
SHELL      := /bin/bash
SWIFT      ?= swift
BIN        := .build/debug/hsmbackup
APT_PKGS   := libssl-dev libarchive-dev libzstd-dev libarchive-tools pkg-config zstd
# HTTPS (AWSCore on libssl): the TLS tests make their throwaway CA with the openssl CLI.
APT_PKGS   += openssl
# PKCS#11 (issue 15): SoftHSM2 tokens for the tests and the demo, pkcs11-tool, p11-kit's pkcs11.h.
APT_PKGS   += softhsm2 opensc libp11-kit-dev
PKCS11_FILES := /usr/lib/softhsm/libsofthsm2.so /usr/bin/pkcs11-tool /usr/include/p11-kit-1/p11-kit/pkcs11.h
PC_LIBS    := libcrypto libssl libarchive libzstd
# For the install and schedule tests: `man -l` renders the installed page, systemd-analyze verifies the units.
OPS_PKGS   := man-db systemd

.PHONY: deps build release demo test test-asan test-tsan samples interop clean

deps:
	@if pkg-config --exists $(PC_LIBS) && command -v bsdtar >/dev/null && command -v openssl >/dev/null \
	    $(foreach f,$(PKCS11_FILES),&& test -e $(f)); then :; else \
	  echo "installing system packages: $(APT_PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS) >/dev/null; \
	fi
	@if command -v man >/dev/null && command -v systemd-analyze >/dev/null; then :; else \
	  echo "installing system packages: $(OPS_PKGS)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(OPS_PKGS) >/dev/null; \
	fi

build: deps
	$(SWIFT) build

# Release builds link the Swift runtime and Foundation statically (the C libraries stay shared):
# the binary runs without the Swift toolchain, and starts without resolving the Swift libraries'
# symbols (issue 17: verify 5-9% faster). Every release build here uses the same flags, so none
# of them rebuilds what another built.
RELEASE_FLAGS := -c release --static-swift-stdlib
BUILD_FLAGS_release := $(RELEASE_FLAGS)
BUILD_FLAGS_debug   := -c debug

release: deps
	$(SWIFT) build $(RELEASE_FLAGS)

demo: build
	@bash scripts/demo.sh $(BIN)

# Runs the whole suite: the interop check against the official AWS Encryption SDK (both
# directions), then every XCTest; the runner's own summary, then one plain "N passed, N failed"
# line, are the last things printed.
# The XCTests run with a moto server up (scripts/aws/with-moto.sh: venv in .build-aws-venv/,
# loopback, signature checks on, stopped at the end); HSMBACKUP_REQUIRE_EXTERNAL=1 makes a test
# whose external tool or server is missing fail instead of skip. TMPDIR is a fresh directory,
# removed when the suite ends however it ends, so the scratch homes, stores and tokens the tests
# make (several GB over a run) never stay behind in /tmp.
test: deps
	$(SWIFT) build --build-tests
	$(MAKE) --no-print-directory man docs CONFIG=debug SWIFT="$(SWIFT)"
	bash scripts/interop/run.sh $(BIN)
	@set -o pipefail; scratch=$$(mktemp -d -t hsmbackup-test.XXXXXX); trap 'rm -rf "$$scratch"' EXIT; \
	  TMPDIR=$$scratch HSMBACKUP_REQUIRE_EXTERNAL=1 bash scripts/aws/with-moto.sh \
	  $(SWIFT) test --skip-build --disable-swift-testing 2>&1 | tee .build/test.log \
	  | grep -vE "^Test Case .*(started|passed)"; rc=$$?; \
	  line=$$(grep -E "^\s*Executed [0-9]+ tests?, with ([0-9]+ tests? skipped and )?[0-9]+ failures?" .build/test.log | tail -1); \
	  n=$$(echo "$$line" | sed -E "s/.*Executed ([0-9]+) tests?.*/\1/"); \
	  f=$$(echo "$$line" | sed -E "s/.* ([0-9]+) failures?.*/\1/"); \
	  s=$$(echo "$$line" | sed -nE "s/.*with ([0-9]+) tests? skipped.*/\1/p"); s=$${s:-0}; \
	  if [ -n "$$line" ]; then echo "tests: $$((n - f - s)) passed, $$f failed, $$s skipped"; fi; exit $$rc

# Regenerates spec/vectors/inner, samples/, spec/vectors/archive and spec/vectors/store
# deterministically (fixed keys, seeds, clock, randomness; the signed archive keeps its committed
# footer while every byte before it is unchanged, spec/FORMAT.md 3.10).
samples: build
	$(BIN) hsm generate-samples --vectors spec/vectors/inner --samples samples
	$(BIN) hsm generate-archive-vectors --archive spec/vectors/archive --store spec/vectors/store

# Interop with the official AWS Encryption SDK for Python, both directions (throwaway venv, PyPI).
interop: deps
	$(SWIFT) build --product hsmbackup
	bash scripts/interop/run.sh $(BIN)

# The suite under AddressSanitizer (LeakSanitizer on, with the XCTest/runtime suppressions),
# and the concurrency tests (the store's processes, the chunk and object pipelines, the parallel
# replica checks) under ThreadSanitizer. Separate build folders.
test-asan: deps
	$(SWIFT) build --build-tests --sanitize=address --scratch-path .build-asan
	LSAN_OPTIONS=suppressions=$(CURDIR)/scripts/sanitizers/lsan.supp ASAN_OPTIONS=detect_leaks=1 \
	  $(SWIFT) test --skip-build --sanitize=address --scratch-path .build-asan --disable-swift-testing

test-tsan: deps
	$(SWIFT) build --build-tests --sanitize=thread --scratch-path .build-tsan
	$(SWIFT) test --skip-build --sanitize=thread --scratch-path .build-tsan --disable-swift-testing --filter "ProcessTests|CatalogTests|LocalObjectStoreTests|StreamingTests|HostilePayloadTests|PayloadReaderTests|FacadeTests"

clean:
	rm -rf .build .build-asan .build-tsan .build-fuzz .build-bench

# Benchmarks (issue 7): release build, then every row of bench/README.md against its peer (restic
# and age from apt; aws-encryption-cli and moto's KMS, on loopback, in a venv under .build-bench/).
# Prints a table and writes bench/results.md and bench/results.json. Knobs: BENCH_REPS, BENCH_MIB,
# BENCH_FLEET, BENCH_CATALOG, BENCH_ONLY (see bench/README.md).
BENCH_VENV ?= .build-bench/venv
.PHONY: bench
bench: deps
	$(SWIFT) build $(RELEASE_FLAGS) --product hsmbackup
	$(SWIFT) build $(RELEASE_FLAGS) --product BenchTool
	@if grep -q '"KWPBench"' Package.swift; then $(SWIFT) build $(RELEASE_FLAGS) --product KWPBench; fi
	@if command -v restic >/dev/null && command -v age >/dev/null && command -v age-keygen >/dev/null \
	    && python3 -c 'import ensurepip' 2>/dev/null; then :; else \
	  echo "installing benchmark peers: restic age python3-venv"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq restic age python3-venv >/dev/null; \
	fi
	@if [ -x $(BENCH_VENV)/bin/aws-encryption-cli ] && [ -x $(BENCH_VENV)/bin/moto_server ]; then :; else \
	  echo "installing aws-encryption-sdk-cli and moto[server] into $(BENCH_VENV)"; \
	  python3 -m venv $(BENCH_VENV) && $(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check \
	    aws-encryption-sdk-cli 'moto[server]'; \
	fi
	BENCH_VENV=$(BENCH_VENV) python3 bench/run.py

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

# Install (issue 18). `make install [PREFIX=/usr/local] [DESTDIR=...]` builds the release binary
# (CONFIG=debug: the debug one), generates the man page with swift-argument-parser's
# generate-manual plugin, and installs the binary, the man page, bash/zsh/fish completions and the
# systemd units (they run $(PREFIX)/bin/hsmbackup with the home UNIT_HOME; `hsmbackup schedule
# install --systemd DIR` writes them for another home or user). `install-files` installs what is
# already built (INSTALL_BIN and the generated page) without calling swift; `uninstall` removes
# exactly what install put there. `make docs` builds the HSMBackup DocC site into .build/docs
# (static hosting) and fails on any warning.
PREFIX      ?= /usr/local
DESTDIR     ?=
CONFIG      ?= release
INSTALL_BIN ?= .build/$(CONFIG)/hsmbackup
UNIT_HOME   ?= /var/lib/hsmbackup
MAN_GEN     := .build/plugins/GenerateManual/outputs/hsmbackup/hsmbackup.1
BINDIR      := $(PREFIX)/bin
MANDIR      := $(PREFIX)/share/man/man1
BASHCOMPDIR := $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR  := $(PREFIX)/share/zsh/site-functions
FISHCOMPDIR := $(PREFIX)/share/fish/vendor_completions.d
UNITDIR     := $(PREFIX)/lib/systemd/system
INSTALLED   := $(BINDIR)/hsmbackup $(MANDIR)/hsmbackup.1 $(BASHCOMPDIR)/hsmbackup $(ZSHCOMPDIR)/_hsmbackup \
               $(FISHCOMPDIR)/hsmbackup.fish $(UNITDIR)/hsmbackup.service $(UNITDIR)/hsmbackup.timer

.PHONY: install install-files uninstall man docs
install: deps
	@# The page first, from the debug build (the same text): the plugin builds without the release
	@# flags, and would otherwise relink the release binary after it was built.
	$(MAKE) --no-print-directory man CONFIG=debug SWIFT="$(SWIFT)"
	$(SWIFT) build $(BUILD_FLAGS_$(CONFIG)) --product hsmbackup
	$(MAKE) --no-print-directory install-files CONFIG=$(CONFIG) INSTALL_BIN=$(INSTALL_BIN)

# The plugin builds every product in CONFIG, then runs generate-manual on hsmbackup.
man:
	$(SWIFT) package plugin generate-manual --configuration $(CONFIG)

install-files:
	@test -x $(INSTALL_BIN) || { echo "no $(INSTALL_BIN): run make install (or give INSTALL_BIN=)"; exit 1; }
	@test -f $(MAN_GEN) || { echo "no $(MAN_GEN): run make man CONFIG=$(CONFIG)"; exit 1; }
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR) $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR) \
	  $(DESTDIR)$(FISHCOMPDIR) $(DESTDIR)$(UNITDIR)
	install -m 755 $(INSTALL_BIN) $(DESTDIR)$(BINDIR)/hsmbackup
	@# generate-manual leaves blank lines between paragraphs, which mdoc warns about: .Pp is mdoc's.
	sed 's/^$$/.Pp/' $(MAN_GEN) > $(DESTDIR)$(MANDIR)/hsmbackup.1 && chmod 644 $(DESTDIR)$(MANDIR)/hsmbackup.1
	$(INSTALL_BIN) --generate-completion-script bash > $(DESTDIR)$(BASHCOMPDIR)/hsmbackup
	$(INSTALL_BIN) --generate-completion-script zsh > $(DESTDIR)$(ZSHCOMPDIR)/_hsmbackup
	$(INSTALL_BIN) --generate-completion-script fish > $(DESTDIR)$(FISHCOMPDIR)/hsmbackup.fish
	chmod 644 $(DESTDIR)$(BASHCOMPDIR)/hsmbackup $(DESTDIR)$(ZSHCOMPDIR)/_hsmbackup $(DESTDIR)$(FISHCOMPDIR)/hsmbackup.fish
	$(INSTALL_BIN) --home $(UNIT_HOME) schedule install --systemd $(DESTDIR)$(UNITDIR) --binary $(BINDIR)/hsmbackup >/dev/null
	@echo "installed into $(DESTDIR)$(PREFIX):"; for f in $(INSTALLED); do echo "  $$f"; done

uninstall:
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))

docs:
	$(SWIFT) package --allow-writing-to-directory .build/docs generate-documentation --target HSMBackup \
	  --output-path .build/docs --transform-for-static-hosting --hosting-base-path hsmbackup --warnings-as-errors
