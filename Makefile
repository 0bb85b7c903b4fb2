# cowtrace developer entry points: setup, install, demo, test, lint, clean.
#
# Two installs, two sets of Debian packages:
# - `make install` (and `make demo`, which runs it) is what a user needs to *run* cowtrace:
#   RUNTIME_PACKAGES (apt-get --no-install-recommends), kernel headers linked, tracefs mounted,
#   and cowtrace installed as a regular package into a venv outside the checkout, $(PREFIX)
#   (/opt/cowtrace, readable by every user), with /usr/local/bin/cowtrace linking to it.
#   `make clean` leaves it alone.
# - `make test` (and `make dev`) adds TEST_PACKAGES (the servers, browser and tools the tests
#   use) and the checkout's own .venv: an editable install with the dev extras, which the
#   tests run (`sys.executable -m cowtrace`).
# `make setup` (the default) does both. Each step first checks whether it is needed
# (dpkg-query, readlink, mountpoint, a stamp file redone when the sources change) and does
# nothing when it is not; a step that is needed and not root stops with one line.
#
# Why an editable install (pip install -e) for the tests: `python -m pytest` run from the
# checkout puts the checkout first on sys.path, so `cowtrace` is imported from ./cowtrace, not
# site-packages. With a regular install `cowtrace.bpf` (./bpf, mapped in by pyproject's
# package-dir) is then not found at all. setuptools' editable finder maps cowtrace ->
# ./cowtrace and cowtrace.bpf -> ./bpf, so imports and importlib.resources.files("cowtrace.bpf")
# resolve to the checkout wherever Python starts, and edits under cowtrace/ or bpf/ need no
# reinstall. (A regular `pip install .`, as into $(PREFIX), ships bpf/*.c as
# site-packages/cowtrace/bpf/: .ci/run checks the wheel.)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := setup

# Debian packages cowtrace needs to run, no more: Debian's bcc for /usr/bin/python3, the kernel
# headers bcc compiles the BPF program against at start-up (they bring their gcc through
# linux-compiler-gcc-*; cowtrace itself compiles nothing with it), python3-venv for $(PREFIX)
# and pyelftools (ELF symbols). Installed with --no-install-recommends.
RUNTIME_PACKAGES := python3-bpfcc linux-headers-amd64 python3-venv python3-pyelftools
# What the tests, tools and benchmarks add. Append here; nothing else needs changing.
# bpftool (the leak check of every kernel test), gcc and make (tests/fixtures), procps.
TEST_PACKAGES := bpftool gcc make procps
# The C library's headers for the fixtures (gcc only recommends them), and its detached debug
# symbols: the allocation tests name glibc's static functions (_int_free) from them.
TEST_PACKAGES += libc6-dev libc6-dbg
# The browser test of `cowtrace report --html` (tests/browser/) runs Debian's Chromium.
TEST_PACKAGES += chromium
# Prometheus and promtool for the metrics tests (tests/kernel/test_metrics_prometheus.py).
TEST_PACKAGES += prometheus
# Real servers of the end-to-end examples (tests/kernel/test_examples_*.py).
TEST_PACKAGES += redis-server nginx
# wrk, the HTTP load of bench/servers.py (production cost benchmarks).
TEST_PACKAGES += wrk
# jemalloc, for the fixture that checks allocator probes on a jemalloc program.
TEST_PACKAGES += libjemalloc2
# Debian's CPython 3.11 internal headers (make python-offsets, and its test).
TEST_PACKAGES += libpython3.11-dev
# PyYAML reads examples/agent/daemonset.yaml in tests/unit/test_deploy.py.
TEST_PACKAGES += python3-yaml

# Debian's bcc binds to the system interpreter only (the python3 first on PATH may be pyenv's).
SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
INSTALL_STAMP := $(VENV)/.cowtrace-installed
# The user-facing install: a venv outside the checkout, so it survives `make clean`, and any
# user can run it (a checkout under /root is not readable by others).
PREFIX := /opt/cowtrace
PREFIX_STAMP := $(PREFIX)/.cowtrace-installed
PACKAGE_SOURCES := pyproject.toml Makefile README.md LICENSE $(shell find cowtrace bpf -type f \
	\( -name '*.py' -o -name '*.c' -o -name '*.h' -o -name '*.json' -o -name '*.S' \) \
	-not -path '*/__pycache__/*')
MODULES_DIR := /lib/modules/$(shell uname -r)
BIN_LINK := /usr/local/bin/cowtrace
PYTEST_ARGS ?=
DEMO_ARGS ?=

# A venv made by another interpreter (e.g. pyenv's), or without system site-packages, cannot
# import Debian's bcc: such a .venv is rebuilt.
VENV_OK := $(shell grep -qsx 'home = /usr/bin' $(VENV)/pyvenv.cfg \
	&& grep -qsx 'include-system-site-packages = true' $(VENV)/pyvenv.cfg && echo yes)

# $(call require_root,what): stop with a clear message when a step that is needed is not root.
require_root = [ "$$(id -u)" = 0 ] || { echo "make: $(1) needs root: run 'make setup' as root" >&2; exit 1; }

# $(call apt_ensure,PACKAGES): apt-get install --no-install-recommends those not installed.
apt_ensure = missing=""; \
	for pkg in $(1); do \
	  [ "$$(dpkg-query -W -f='$${db:Status-Status}' "$$pkg" 2>/dev/null || true)" = installed ] \
	    || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  $(call require_root,installing$$missing); \
	  echo "setup: installing$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=300 -qq update; \
	  apt-get -o DPkg::Lock::Timeout=300 -qq -y install --no-install-recommends $$missing; \
	fi

.PHONY: setup install dev system system-test demo test lint clean python-offsets FORCE

setup: install dev

# What a user needs to run cowtrace (see the top of this file).
install: $(PREFIX_STAMP)
	@target="$(PREFIX)/bin/cowtrace"; \
	if [ "$$(readlink $(BIN_LINK) || true)" != "$$target" ]; then \
	  $(call require_root,linking $(BIN_LINK)); \
	  ln -sfn "$$target" $(BIN_LINK); \
	  echo "setup: $(BIN_LINK) -> $$target"; \
	fi

# A regular (non-editable) install of this checkout into $(PREFIX), redone when a source
# changes. umask 022 and a+rX: every user may run it. build/ is removed first: setuptools'
# in-tree build would otherwise ship a module deleted since the last install.
$(PREFIX_STAMP): $(PACKAGE_SOURCES) | system
	@$(call require_root,installing into $(PREFIX))
	@umask 022; \
	if ! grep -qsx 'home = /usr/bin' $(PREFIX)/pyvenv.cfg \
	  || ! grep -qsx 'include-system-site-packages = true' $(PREFIX)/pyvenv.cfg; then \
	  rm -rf $(PREFIX); \
	  echo "setup: creating $(PREFIX) with $(SYSTEM_PYTHON) --system-site-packages"; \
	  $(SYSTEM_PYTHON) -m venv --system-site-packages $(PREFIX); \
	fi; \
	rm -rf build; \
	$(PREFIX)/bin/python -m pip install --disable-pip-version-check -q --no-cache-dir . \
	&& $(PREFIX)/bin/python -m pip install --disable-pip-version-check -q --no-cache-dir \
	  --force-reinstall --no-deps . \
	&& chmod -R a+rX $(PREFIX) \
	&& echo "setup: installed cowtrace into $(PREFIX)"
	@touch $@

# The checkout's development venv and what the tests use.
dev: $(INSTALL_STAMP)

# Runtime packages, kernel headers and the tracing filesystems. Runs every time; costs ~0.1 s
# when there is nothing to do.
system:
	@$(call apt_ensure,$(RUNTIME_PACKAGES))
# bcc compiles its BPF C against /lib/modules/$(uname -r)/build. Debian has no headers for a
# foreign kernel; its own linux-headers-amd64 work for tracepoint-only BPF when build/ points to
# the newest /usr/src/linux-headers-*-amd64 and source/ to the matching -common directory.
# Headers that already work (build/include exists) are left alone.
	@build=$(MODULES_DIR)/build; \
	if [ -d "$$build/include" ]; then \
	  hdr=$$(readlink -f "$$build"); \
	else \
	  hdr=$$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1); \
	  [ -n "$$hdr" ] || { echo "make: no /usr/src/linux-headers-*-amd64 to link" >&2; exit 1; }; \
	  if [ -e "$$build" ] && [ ! -L "$$build" ]; then \
	    echo "make: $$build is a directory without include/: fix or remove it" >&2; exit 1; \
	  fi; \
	  $(call require_root,linking kernel headers); \
	  mkdir -p $(MODULES_DIR); \
	  ln -sfn "$$hdr" "$$build"; \
	  echo "setup: $$build -> $$hdr"; \
	fi; \
	case "$$hdr" in /usr/src/linux-headers-*-amd64) \
	  common="$${hdr%-amd64}-common"; \
	  if [ "$$(readlink -f $(MODULES_DIR)/source || true)" != "$$common" ]; then \
	    $(call require_root,linking kernel headers); \
	    ln -sfn "$$common" $(MODULES_DIR)/source; \
	    echo "setup: $(MODULES_DIR)/source -> $$common"; \
	  fi;; \
	esac
# bcc attaches tracepoints through tracefs, which a new machine does not mount.
	@for m in tracefs:/sys/kernel/tracing debugfs:/sys/kernel/debug; do \
	  fs=$${m%%:*}; dir=$${m#*:}; \
	  if ! mountpoint -q "$$dir"; then \
	    $(call require_root,mounting $$fs); \
	    mount -t "$$fs" nodev "$$dir"; \
	    echo "setup: mounted $$fs at $$dir"; \
	  fi; \
	done

# The test servers, browser and tools, on top of the runtime.
system-test: system
	@$(call apt_ensure,$(TEST_PACKAGES))

$(INSTALL_STAMP): pyproject.toml Makefile $(if $(VENV_OK),,FORCE) | system-test
	@if [ -z "$(VENV_OK)" ]; then \
	  rm -rf $(VENV); \
	  echo "setup: creating $(VENV) with $(SYSTEM_PYTHON) --system-site-packages"; \
	  $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV); \
	fi
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $@

demo: install
	$(PREFIX)/bin/cowtrace demo $(DEMO_ARGS)

test: dev
	$(VENV)/bin/python -m pytest tests $(PYTEST_ARGS)

# CPython struct offsets for Python writer stacks (3.11/3.12 publish none): regenerate the
# shipped table from the headers of the interpreters installed here (pyenv's and Debian's).
PYTHON_OFFSETS_FROM ?= /usr/bin/python3.11 $(wildcard /root/.pyenv/versions/3.1[123].*/bin/python3.1[123])
python-offsets: $(INSTALL_STAMP)
	$(VENV)/bin/python tools/gen_offsets.py $(PYTHON_OFFSETS_FROM) \
	  > cowtrace/python/offsets_table.json

lint: $(INSTALL_STAMP)
	$(VENV)/bin/ruff check .

# Leaves the system part (packages, header links, mounts) and $(PREFIX) alone: other checkouts
# and users use them too. Removes $(BIN_LINK) only if it points into this checkout (as it did
# before cowtrace was installed into $(PREFIX)).
clean:
	@if [ "$$(readlink $(BIN_LINK) || true)" = "$(CURDIR)/$(VENV)/bin/cowtrace" ]; then \
	  rm -f $(BIN_LINK); \
	fi
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

FORCE:
