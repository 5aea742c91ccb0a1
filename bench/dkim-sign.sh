#!/usr/bin/env bash
# dkim-sign.sh: DKIM signing throughput, Ravelin's signer against dkimpy, on the same messages
# in the same run.
#
#   bench/dkim-sign.sh [--messages N] [--size KiB] [--rounds R]
#
# Makes N distinct messages of SIZE KiB (a text body with a few header fields, CRLF), one
# RSA-2048 and one Ed25519 key with `ravelin dkim keygen`, then signs every message R times:
#   - Ravelin: crates/gateway/examples/dkim_sign.rs (release build), the gateway's Signer as
#     it signs a message entering the spool: relaxed/simple, the gateway's header list with
#     From, To, Subject and Date over-signed;
#   - dkimpy (from .venv, scripts/install-test-deps.sh): dkim.sign() with relaxed/simple and
#     the same header list, one process, messages already in memory.
# One core each, one after the other. Prints messages per second for each algorithm and tool,
# the ratios, and markdown table rows for docs/BENCHMARKS.md. Defaults: 200 messages of
# 10 KiB, 5 rounds (1000 signatures per tool and algorithm).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
MESSAGES=200
SIZE_KIB=10
ROUNDS=5

die() { echo "dkim-sign: error: $*" >&2; exit 1; }
say() { echo "dkim-sign: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --messages) MESSAGES="${2:?}"; shift 2 ;;
        --size) SIZE_KIB="${2:?}"; shift 2 ;;
        --rounds) ROUNDS="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
for v in MESSAGES SIZE_KIB ROUNDS; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
[ "$MESSAGES" -le 100000 ] && [ "$SIZE_KIB" -le 10240 ] && [ "$ROUNDS" -le 1000 ] \
    || die "limits: --messages <= 100000, --size <= 10240 KiB, --rounds <= 1000"

PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || die "no .venv: run scripts/install-test-deps.sh"
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
say "building (cargo build --release: ravelin, and the gateway's example dkim_sign)"
(cd "$ROOT" && cargo build --release -q -p ravelin >&2 \
    && cargo build --release -q -p ravelin-gateway --example dkim_sign >&2)
RAVELIN="$TARGET/release/ravelin"
SIGN="$TARGET/release/examples/dkim_sign"

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/messages" "$WORK/keys"
"$PY" - "$WORK/messages" "$MESSAGES" "$SIZE_KIB" <<'EOF'
import os, random, sys
out, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
words = "the quick brown fox jumps over a lazy dog mail gateway signs every message".split()
for i in range(n):
    rnd = random.Random(i)
    head = (f"From: Alice <alice@example.org>\r\nTo: Bob <bob@partner.example>\r\n"
            f"Subject: report {i}\r\nDate: Thu, 03 Dec 2026 10:00:{i % 60:02d} +0000\r\n"
            f"Message-ID: <bench-{i}@example.org>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=utf-8\r\n\r\n")
    body = []
    size = 0
    while size < kib * 1024:
        line = " ".join(rnd.choice(words) for _ in range(12)) + "\r\n"
        body.append(line)
        size += len(line)
    with open(os.path.join(out, f"{i:06d}.eml"), "w", newline="") as f:
        f.write(head + "".join(body))
EOF
for alg in rsa ed25519; do
    "$RAVELIN" dkim keygen --domain example.org --selector "$alg" --algorithm "$alg" \
        --output "$WORK/keys" >/dev/null
done

ratio() { "$PY" -c "import sys; print(float(sys.argv[1]) / float(sys.argv[2]))" "$1" "$2"; }

declare -A RATE
for alg in rsa ed25519; do
    key="$WORK/keys/example.org.$alg.pem"
    say "ravelin, $alg: $MESSAGES messages x $ROUNDS rounds"
    RATE[ravelin-$alg]=$("$SIGN" --key "$key" --domain example.org --selector "$alg" \
        --rounds "$ROUNDS" "$WORK"/messages/*.eml | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["per_second"])')
    say "dkimpy, $alg"
    RATE[dkimpy-$alg]=$("$PY" - "$key" "$alg" "$ROUNDS" "$WORK"/messages/*.eml <<'EOF'
import base64, sys, time
import dkim
key_file, alg, rounds, files = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
pem = open(key_file, "rb").read()
if alg == "ed25519":
    # dkimpy takes the raw 32-byte seed, base64; a PKCS#8 Ed25519 key ends with it.
    der = base64.b64decode(b"".join(l for l in pem.splitlines() if not l.startswith(b"-----")))
    key, signature_algorithm = base64.b64encode(der[-32:]), b"ed25519-sha256"
else:
    key, signature_algorithm = pem, b"rsa-sha256"
messages = [open(f, "rb").read() for f in files]
headers = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"]
# Over-signing, as the gateway does: From, To, Subject and Date once more.
headers += [b"from", b"to", b"subject", b"date"]
start = time.perf_counter()
n = 0
for _ in range(rounds):
    for m in messages:
        sig = dkim.sign(m, alg.encode(), b"example.org", key, canonicalize=(b"relaxed", b"simple"),
                        include_headers=headers, signature_algorithm=signature_algorithm)
        assert sig.startswith(b"DKIM-Signature:"), sig[:40]
        n += 1
print(f"{n / (time.perf_counter() - start):.1f}")
EOF
)
done

echo
printf '%-10s %14s %14s %8s\n' algorithm "ravelin msg/s" "dkimpy msg/s" ratio
for alg in rsa ed25519; do
    r=${RATE[ravelin-$alg]}; d=${RATE[dkimpy-$alg]}
    printf '%-10s %14s %14s %7.1fx\n' "$alg" "$r" "$d" "$(ratio "$r" "$d")"
done
echo
echo "markdown rows for docs/BENCHMARKS.md:"
for alg in rsa ed25519; do
    r=${RATE[ravelin-$alg]}; d=${RATE[dkimpy-$alg]}
    printf '| %s | %s KiB | %s | %s | %.1f× |\n' "$alg" "$SIZE_KIB" "$r" "$d" "$(ratio "$r" "$d")"
done
