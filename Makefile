# wrennd — see README.md for what each target does.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NATIVE_SRC := $(wildcard native/*.c native/*.h native/sim/*.c native/sim/*.h native/exec/*.c) \
              native/cffi_common.py native/build_native.py native/sim/build_sim.py
NATIVE_STAMP := wrennd/.native-built
C_FLAGS := -std=c11 -O1 -g -Wall -Wextra -Werror -fno-omit-frame-pointer
SAN_FLAGS := $(C_FLAGS) -fsanitize=address,undefined -fno-sanitize-recover=all
SAN_DIR := build/sanitize
NATIVE_TESTS := $(patsubst native/tests/%.c,$(SAN_DIR)/%,$(wildcard native/tests/test_*.c))
# ThreadSanitizer cannot be combined with ASan: the same tests in their own build.
# They run the engine's fault and prefetch threads on real userfaultfds (root or
# vm.unprivileged_userfaultfd=1; without a usable uffd the engine test says so and
# runs only its argument checks).  halt_on_error: the first race fails the run.
TSAN_FLAGS := $(C_FLAGS) -fsanitize=thread
TSAN_DIR := build/tsan
TSAN_TESTS := $(patsubst native/tests/%.c,$(TSAN_DIR)/%,$(wildcard native/tests/test_*.c))

.PHONY: install completion debs test lint typecheck sanitize pytest bench clean install-systemd stress

install: debs $(STAMP) $(NATIVE_STAMP) completion

# wrennctl's bash completion, generated from its argument parser (argcomplete):
# into the venv, and system-wide when /etc/bash_completion.d is writable (root).
COMPLETION := $(VENV)/share/bash-completion/completions/wrennctl
completion: $(COMPLETION)
$(COMPLETION): $(STAMP)
	@mkdir -p $(dir $@)
	$(VENV)/bin/register-python-argcomplete wrennctl > $@
	@if [ -w /etc/bash_completion.d ]; then cp $@ /etc/bash_completion.d/wrennctl; fi

debs:
	@deps/install-debian-packages

$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check 'setuptools>=77' wheel 'cffi>=1.16'
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test,bench]'
	touch $@

# The editable install imports wrennd._native (the daemon's) and
# wrennd_sim._simnative (the simulator's VMM side) from the source tree:
# rebuild both in place whenever the C sources change.
$(NATIVE_STAMP): $(NATIVE_SRC) $(STAMP)
	$(PY) setup.py -q build_ext --inplace
	touch $@

test: install lint typecheck sanitize pytest

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

typecheck: install
	$(VENV)/bin/mypy

# Native unit tests, built under ASan + UBSan with the sources of both modules
# (the engine's tests play the VMM with the simulator's side, native/sim/), then
# again under TSan.
SAN_SRC := $(wildcard native/*.c native/sim/*.c)
sanitize: $(NATIVE_TESTS) $(TSAN_TESTS)
	@set -e; for t in $(NATIVE_TESTS); do echo "== $$t"; $$t; done
	@set -e; for t in $(TSAN_TESTS); do echo "== $$t"; \
		TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" $$t; done

$(SAN_DIR)/%: native/tests/%.c $(SAN_SRC) $(wildcard native/*.h native/sim/*.h native/tests/*.h)
	@mkdir -p $(SAN_DIR)
	$(CC) $(SAN_FLAGS) -Inative -o $@ $< $(SAN_SRC)

$(TSAN_DIR)/%: native/tests/%.c $(SAN_SRC) $(wildcard native/*.h native/sim/*.h native/tests/*.h)
	@mkdir -p $(TSAN_DIR)
	$(CC) $(TSAN_FLAGS) -Inative -o $@ $< $(SAN_SRC)

pytest: install
	$(PY) -m pytest -rs $(PYTEST_ARGS)

# `make test` RUNS times in a row under `stress-ng --cpu 2`, to find timing flakes
# (tests/stress_runs.py; logs and a summary in build/stress/).
RUNS ?= 5
stress: install
	$(PY) tests/stress_runs.py --runs $(RUNS)

bench: install
	$(PY) bench/zeroscan_bench.py
	$(PY) bench/snapshot_bench.py
	$(PY) bench/rpc_bench.py
	$(PY) bench/faultin.py

# systemd units and snippets (systemd/). BINDIR is where the wrennd script lives:
# this checkout's venv by default. With DESTDIR set (packaging, tests) files are
# only copied; without it the group and directories are created and systemd reloaded.
BINDIR ?= $(abspath $(VENV))/bin
UNITDIR ?= /etc/systemd/system
SYSUSERSDIR ?= /etc/sysusers.d
TMPFILESDIR ?= /etc/tmpfiles.d
install-systemd:
	install -d $(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR)
	sed 's|@BINDIR@|$(BINDIR)|g' systemd/wrennd.service > $(DESTDIR)$(UNITDIR)/wrennd.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/wrennd.service
	install -m 0644 systemd/wrennd.socket $(DESTDIR)$(UNITDIR)/wrennd.socket
	install -m 0644 systemd/wrennd.sysusers $(DESTDIR)$(SYSUSERSDIR)/wrennd.conf
	install -m 0644 systemd/wrennd.tmpfiles $(DESTDIR)$(TMPFILESDIR)/wrennd.conf
	if [ -z "$(DESTDIR)" ]; then \
		systemd-sysusers $(SYSUSERSDIR)/wrennd.conf && \
		systemd-tmpfiles --create $(TMPFILESDIR)/wrennd.conf && \
		systemctl daemon-reload; fi

clean:
	rm -rf build $(VENV) wrennd/_native*.so wrennd_sim/_simnative*.so $(NATIVE_STAMP) *.egg-info

# Guest rootfs and kernel (images/, README "Guest agent and image").
.PHONY: image kernel guest-smoke
image:
	images/build-image build/base.ext4

kernel:
	images/fetch-kernel build/vmlinux

# The image on a real kernel under QEMU -M microvm (TCG), through the agent (docs/real-host.md).
guest-smoke: install kernel image
	$(PY) images/guest_smoke.py --kernel build/vmlinux --image build/base.ext4

# The main job, scripted with wrennctl (README "Sandboxes"): root, cleans up after itself.
.PHONY: demo console
demo: install
	$(PY) demo/demo.py

# A scratch daemon (as make demo) with the HTTP console on a free loopback port, until Ctrl-C.
console: install
	$(PY) demo/console.py
