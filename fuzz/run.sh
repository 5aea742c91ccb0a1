#!/usr/bin/env bash
# Runs cargo-fuzz targets for SECONDS each (default 60) on the nightly toolchain, one after the
# other, starting from the seed corpus in fuzz/corpus/<target>. The targets are built once
# (release, with debug assertions and overflow checks) before the first run.
#
#   fuzz/run.sh [--scratch] [SECONDS] [TARGET...]     (no TARGET: every target)
#
# New inputs found stay in fuzz/corpus/<target>, unless --scratch is given: then they go to a
# temporary directory and the repository's corpus is only read (CI). A crash stops the script
# with exit code 1 and the reproducer's path (fuzz/artifacts/<target>/...); replay it with
# `cargo +nightly fuzz run -a TARGET PATH`.
set -euo pipefail
cd "$(dirname "$0")"
scratch=""
if [ "${1:-}" = "--scratch" ]; then
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' EXIT
    shift
fi
seconds="${1:-60}"
shift || true
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
cargo +nightly fuzz build -a
for target in "${targets[@]}"; do
    # The configuration loader reads whole files; everything else reads lines or short reads.
    max_len=4096
    [ "$target" = config_loader ] && max_len=16384
    mkdir -p "corpus/$target" "artifacts/$target"
    dirs=("corpus/$target")
    if [ -n "$scratch" ]; then
        mkdir -p "$scratch/$target"
        dirs=("$scratch/$target" "corpus/$target")
    fi
    echo "== $target: ${seconds}s"
    before=$(ls "artifacts/$target")
    if ! cargo +nightly fuzz run -a "$target" "${dirs[@]}" -- \
        -max_total_time="$seconds" -max_len="$max_len" -rss_limit_mb=1024 -print_final_stats=1; then
        echo "fuzz target $target failed; reproducer:" >&2
        comm -13 <(echo "$before") <(ls "artifacts/$target") | sed "s|^|$PWD/artifacts/$target/|" >&2
        exit 1
    fi
done
