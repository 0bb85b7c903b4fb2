# cowtrace developer entry points: setup, demo, test, lint, clean.
#
# `make setup` (as root) turns a brand-new Debian 12 x86-64 machine into one that can build, test
# and run cowtrace, and is cheap to re-run: each system step first checks whether it is needed
# (dpkg-query, readlink, mountpoint) and does nothing when it is not, and the Python install is a
# stamp file that make redoes only when pyproject.toml or this Makefile change.
#
# Why an editable install (pip install -e): `python -m pytest` run from the checkout puts the
# checkout first on sys.path, so `cowtrace` is imported from ./cowtrace, not site-packages. With a
# regular install `cowtrace.bpf` (./bpf, mapped in by pyproject's package-dir) is then not found
# at all. setuptools' editable finder maps cowtrace -> ./cowtrace and cowtrace.bpf -> ./bpf, so
# imports and importlib.resources.files("cowtrace.bpf") resolve to the checkout wherever Python
# starts, and edits under cowtrace/ or bpf/ need no reinstall. (A regular `pip install .` does ship
# bpf/*.c as site-packages/cowtrace/bpf/: .ci/run checks the wheel.)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := setup

# Debian packages cowtrace needs to build, test or run. Append here; nothing else needs changing.
APT_PACKAGES := python3-bpfcc bpfcc-tools bpftool linux-headers-amd64 python3-venv gcc make procps
# The browser test of `cowtrace report --html` (tests/browser/) runs Debian's Chromium.
APT_PACKAGES += chromium
# Prometheus and promtool for the metrics tests (tests/kernel/test_metrics_prometheus.py).
APT_PACKAGES += prometheus
# Real servers of the end-to-end examples (tests/kernel/test_examples_*.py).
APT_PACKAGES += redis-server nginx
# wrk, the HTTP load of bench/servers.py (production cost benchmarks).
APT_PACKAGES += wrk
# jemalloc, for the fixture that checks allocator probes on a jemalloc program.
APT_PACKAGES += libjemalloc2
# pyelftools (ELF symbols of CPython) and Debian's CPython 3.11 internal headers (python-offsets).
APT_PACKAGES += python3-pyelftools libpython3.11-dev

# Debian's bcc binds to the system interpreter only (the python3 first on PATH may be pyenv's).
SYSTEM_PYTHON := /usr/bin/python3
VENV := .venv
INSTALL_STAMP := $(VENV)/.cowtrace-installed
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

.PHONY: setup system demo test lint clean python-offsets FORCE

setup: $(INSTALL_STAMP)
	@target="$(CURDIR)/$(VENV)/bin/cowtrace"; \
	if [ "$$(readlink $(BIN_LINK) || true)" != "$$target" ]; then \
	  $(call require_root,linking $(BIN_LINK)); \
	  ln -sfn "$$target" $(BIN_LINK); \
	  echo "setup: $(BIN_LINK) -> $$target"; \
	fi

# Debian packages, kernel headers and the tracing filesystems. Runs every time; costs ~0.1 s
# when there is nothing to do.
system:
	@missing=""; \
	for pkg in $(APT_PACKAGES); do \
	  [ "$$(dpkg-query -W -f='$${db:Status-Status}' "$$pkg" 2>/dev/null || true)" = installed ] \
	    || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  $(call require_root,installing$$missing); \
	  echo "setup: installing$$missing"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get -o DPkg::Lock::Timeout=300 -qq update; \
	  apt-get -o DPkg::Lock::Timeout=300 -qq -y install $(APT_PACKAGES); \
	fi
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

$(INSTALL_STAMP): pyproject.toml Makefile $(if $(VENV_OK),,FORCE) | system
	@if [ -z "$(VENV_OK)" ]; then \
	  rm -rf $(VENV); \
	  echo "setup: creating $(VENV) with $(SYSTEM_PYTHON) --system-site-packages"; \
	  $(SYSTEM_PYTHON) -m venv --system-site-packages $(VENV); \
	fi
	$(VENV)/bin/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	@touch $@

demo: setup
	$(VENV)/bin/cowtrace demo $(DEMO_ARGS)

test: setup
	$(VENV)/bin/python -m pytest tests $(PYTEST_ARGS)

# CPython struct offsets for Python writer stacks (3.11/3.12 publish none): regenerate the
# shipped table from the headers of the interpreters installed here (pyenv's and Debian's).
PYTHON_OFFSETS_FROM ?= /usr/bin/python3.11 $(wildcard /root/.pyenv/versions/3.1[123].*/bin/python3.1[123])
python-offsets: $(INSTALL_STAMP)
	$(VENV)/bin/python tools/gen_offsets.py $(PYTHON_OFFSETS_FROM) \
	  > cowtrace/python/offsets_table.json

lint: $(INSTALL_STAMP)
	$(VENV)/bin/ruff check .

# Leaves the system part (packages, header links, mounts) alone: other checkouts use it too.
clean:
	@if [ "$$(readlink $(BIN_LINK) || true)" = "$(CURDIR)/$(VENV)/bin/cowtrace" ]; then \
	  rm -f $(BIN_LINK); \
	fi
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
	find . -path ./.git -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

FORCE:
