#!/usr/bin/env bash
# What `make test` runs after installing and building: every test, on one local cluster this script
# starts and always stops, with the host checked to be as it was before.
#
# $LINT_COMMAND (`make test` gives `make lint`) runs while the cluster starts; a lint failure fails the run
# before any test.
#
# Phase 1 runs every test not marked `exclusive` on $TEST_JOBS pytest-xdist workers side by side: they
# share the cluster and one loopback RabbitMQ (each test works in namespaces and vhosts of its own; each
# worker has its own Redis and operator identity). Phase 2 runs the `exclusive` tests alone (they restart
# the API server, or run an operator that watches every namespace). Extra arguments go to both pytest
# runs. A few phase-1 failures run once more, alone, before phase 2: what then passes is reported as
# flaky under load.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
py=${PY:-$repo/.venv/bin/python}
jobs=${TEST_JOBS:-5}
hostcheck=${HOSTCHECK:-$(mktemp /tmp/celery-operator-hostcheck.XXXXXX)}
export LOCALENV_DIR=${LOCALENV_DIR:-$(mktemp -d /tmp/celery-operator-test.XXXXXX)}
export PYTHONPATH=$here

# The snapshot is of the host without any node: a run that died is cleaned up, a running one waited for.
CELERY_OPERATOR_NODE_WAIT_SECONDS=${CELERY_OPERATOR_NODE_WAIT_SECONDS:-300} \
  "$py" -m localenv hostcheck save "$hostcheck" || { rm -rf "$LOCALENV_DIR"; [ -n "${HOSTCHECK:-}" ] || rm -f "$hostcheck"; exit 1; }
rc=0
finish() {
  [ -z "${matrix_pid:-}" ] || kill "$matrix_pid" 2>/dev/null  # the venv builds, when the run ends before them
  [ -z "${lint_pid:-}" ] || kill "$lint_pid" 2>/dev/null
  [ -z "${collect_pid:-}" ] || kill "$collect_pid" 2>/dev/null
  [ -z "${rabbitmq_pid:-}" ] || wait "$rabbitmq_pid" 2>/dev/null  # a start under way ends before it is stopped
  "$py" -m localenv rabbitmq down "${LOCALENV_RABBITMQ:-$LOCALENV_DIR/rabbitmq.json}" || rc=1
  "$py" -m localenv down || rc=1
  rm -rf "$LOCALENV_DIR"
  "$py" -m localenv hostcheck compare "$hostcheck" || rc=1
  [ -n "${HOSTCHECK:-}" ] || rm -f "$hostcheck"
  exit $rc
}
trap finish EXIT
trap 'rc=130; exit' INT TERM

t0=$SECONDS
# One loopback RabbitMQ for every pytest worker's integration tests (tests/fixtures/brokers.py), started
# while the cluster starts.
export LOCALENV_RABBITMQ=$LOCALENV_DIR/rabbitmq.json
rabbitmq_log=$LOCALENV_DIR/rabbitmq.log
"$py" -m localenv rabbitmq up "$LOCALENV_RABBITMQ" >"$rabbitmq_log" 2>&1 &
rabbitmq_pid=$!
# The support matrix's venvs (one per Python and Celery minor, cached) are built while the cluster starts.
matrix_log=$LOCALENV_DIR/matrix-venvs.log
"$py" -m localenv.matrix venvs >"$matrix_log" 2>&1 &
matrix_pid=$!
export CELERY_OPERATOR_MATRIX_RESULTS=$LOCALENV_DIR/matrix-results
# One collection of the suite while the cluster starts writes the bytecode caches of everything the tests
# import (where Python may write them: `make` lets it), so the test workers do not each compile it all at once.
# Niced, so that it takes what the cluster's start and the lint leave of the CPU.
nice -n 10 "$py" -m pytest -q --collect-only -p no:cacheprovider --rootdir "$repo" "$repo/tests" >/dev/null 2>&1 &
collect_pid=$!
lint_log=$LOCALENV_DIR/lint.log
if [ -n "${LINT_COMMAND:-}" ]; then
  bash -c "$LINT_COMMAND" >"$lint_log" 2>&1 &
  lint_pid=$!
fi
if ! "$py" -m localenv up; then
  echo "the local cluster could not start (see above)" >&2
  rc=1
  exit
fi
echo "cluster up in $((SECONDS - t0)) s"
if [ -n "${lint_pid:-}" ]; then
  wait $lint_pid
  lint_rc=$?
  lint_pid=""  # waited for: never signalled again
  cat "$lint_log"
  if [ $lint_rc -ne 0 ]; then
    echo "lint failed (above): no test runs" >&2
    rc=1
    exit
  fi
  echo "lint passed at $((SECONDS - t0)) s"
fi
if ! wait $matrix_pid; then
  cat "$matrix_log" >&2
  echo "the support matrix's venvs could not be built (above); its tests build what is missing" >&2
fi
matrix_pid=""  # waited for: never signalled again (its pid may be reused)
echo "support matrix venvs ready at $((SECONDS - t0)) s"
if ! wait $rabbitmq_pid; then
  rabbitmq_pid=""
  cat "$rabbitmq_log" >&2
  echo "the tests' shared RabbitMQ could not start (above)" >&2
  rc=1
  exit
fi
rabbitmq_pid=""
cat "$rabbitmq_log"
export LOCALENV_CLUSTER=$LOCALENV_DIR/state.json
cd "$repo" || exit 1
wait $collect_pid  # its failures are the first phase's to report
collect_pid=""
"$py" -m pytest -q -n "$jobs" --dist worksteal -m "not exclusive and not keda" --durations=40 --cache-clear "$@"
r=$?
if [ $r -eq 1 ]; then
  # Tests that failed while sharing 2 cores with $jobs - 1 others run once more, alone. One that then
  # passes is named below as flaky under load (the run passes); one that fails again fails the run, and
  # so does a run with more than $max_reruns failures (that is breakage, not load).
  max_reruns=${TEST_MAX_RERUNS:-4}
  cp .pytest_cache/v/cache/lastfailed "$LOCALENV_DIR/phase1-failed.json" 2>/dev/null || echo '{}' >"$LOCALENV_DIR/phase1-failed.json"
  failed=$("$py" -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$LOCALENV_DIR/phase1-failed.json")
  if [ "$failed" -ge 1 ] && [ "$failed" -le "$max_reruns" ]; then
    echo "phase 1: $failed failed side by side; running them again, alone"
    if "$py" -m pytest -q --last-failed --last-failed-no-failures none -m "not exclusive and not keda" "$@"; then
      flaky="FLAKY UNDER LOAD (failed beside $((jobs - 1)) other test workers, passed alone):
$("$py" -c 'import json,sys; print("\n".join("  " + t for t in json.load(open(sys.argv[1]))))' \
  "$LOCALENV_DIR/phase1-failed.json")"
      echo "$flaky"
    else
      rc=1
    fi
  else
    rc=1
  fi
elif [ $r -ne 0 ]; then
  rc=$r
fi
"$py" -m pytest -q -m "exclusive and not keda" --durations=10 "$@" || { r=$?; [ $r -eq 5 ] || rc=$r; }
echo "tests done in $((SECONDS - t0)) s"
[ -z "${flaky:-}" ] || echo "$flaky"
# The README's support table must be what this run passed (a run of some tests only does not check it).
if [ $# -eq 0 ]; then
  "$py" -m localenv.matrix check "$CELERY_OPERATOR_MATRIX_RESULTS" || rc=1
fi
