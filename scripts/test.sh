#!/usr/bin/env bash
# test.sh: the project's test command. Installs the test peers (scripts/install-test-deps.sh),
# then runs every test of the workspace. Exit code: the tests' exit code.
#
# End-to-end tests start real Postfix instances, smtp-sink and the gateway; with two cores,
# more than a few of them at once only adds waiting, so the thread count is capped.
# Override with RAVELIN_TEST_THREADS=N. Extra arguments go to cargo test.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"

scripts/install-test-deps.sh

threads="${RAVELIN_TEST_THREADS:-4}"
set +e
cargo test --workspace --all-targets "$@" -- --test-threads="$threads"
rc=$?
set -e
exit "$rc"
