#!/usr/bin/env bash
# fuzz-ci.sh: CI's fuzzing step. Makes sure cargo-fuzz and the nightly toolchain are there,
# builds every target in fuzz/ once, then runs each for RAVELIN_FUZZ_SECONDS (default 20) from
# the corpus kept in fuzz/corpus/, leaving that corpus untouched. A crash fails the step and
# names the reproducer under fuzz/artifacts/. Longer local runs: fuzz/run.sh SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
exec fuzz/run.sh --scratch "${RAVELIN_FUZZ_SECONDS:-20}"
