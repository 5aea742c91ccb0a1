#!/usr/bin/env bash
# relay-throughput.sh: Ravelin and Postfix side by side as a relay, on the same load.
#
#   bench/relay-throughput.sh [--messages N] [--sessions S] [--size KiB]
#                             [--ravelin PATH] [--only postfix|ravelin]
#
# One smtp-sink (counting only, no dumps) is the next hop of both. Each relay in turn gets
# the same smtp-source load: N messages of SIZE KiB payload over S parallel sessions, one
# message per session, from sender@example.net to user@example.org:
#   - Postfix: an alternate instance (tests/peers/postfix-instance.sh, relay mode, default
#     queue durability: Postfix fsyncs its queue files) relaying to the sink;
#   - Ravelin: `ravelin serve` with one inbound listener for example.org whose backend is the
#     sink, spool in this run's temporary directory (same file system as Postfix's queue).
# Measured per relay: wall time from the start of smtp-source until the sink has counted all
# N messages (smtp-sink -c), and the time until smtp-source finished (all accepted). After
# each relay has stopped, the sink's counters give the messages it received from that relay
# (must be exactly N, or the script exits 1) and the connections the relay used; Ravelin's
# `stopped` log line gives its group commit (commits and removals per fsync of queue/).
# Memory:
#   - Postfix: every 200 ms, the master and all its descendant processes are listed
#     (/proc/PID/task/PID/children) and their Rss and Pss summed (/proc/PID/smaps_rollup);
#     the peak of each sum over the run is reported. Pss shares pages among the processes
#     that map them, so it is the fairer number for a multi-process server.
#   - Ravelin: VmHWM (the kernel's peak RSS) of the process at the end of its run; its Pss is
#     sampled like Postfix's.
# Prints messages/s for each, the ratios, and a markdown table row for docs/BENCHMARKS.md.
# Defaults: 20000 messages, 20 sessions, 10 KiB. `--messages 200` is a quick smoke run.
#
# Needs root (Postfix instance, smtp-sink privilege drop) and the peers from
# scripts/install-test-deps.sh. Sends traffic only to 127.0.0.1. Every wait has a time
# limit; everything started here is stopped on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PFI="$ROOT/tests/peers/postfix-instance.sh"

MESSAGES=20000
SESSIONS=20
SIZE_KIB=10
RAVELIN=""
ONLY=""

die() { echo "relay-throughput: error: $*" >&2; exit 1; }
say() { echo "relay-throughput: $*" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --messages) MESSAGES="${2:?}"; shift 2 ;;
        --sessions) SESSIONS="${2:?}"; shift 2 ;;
        --size) SIZE_KIB="${2:?}"; shift 2 ;;
        --ravelin) RAVELIN="${2:?}"; shift 2 ;;
        --only) ONLY="${2:?}"; shift 2 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
for v in MESSAGES SESSIONS SIZE_KIB; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
[ "$MESSAGES" -le 10000000 ] && [ "$SESSIONS" -le 1000 ] && [ "$SIZE_KIB" -le 51200 ] \
    || die "limits: --messages <= 10000000, --sessions <= 1000, --size <= 51200 KiB"
case "$ONLY" in ""|postfix|ravelin) ;; *) die "--only postfix|ravelin" ;; esac

[ "$(id -u)" -eq 0 ] || die "run as root (Postfix instance and smtp-sink need it)"
PATH="$PATH:/usr/sbin:/sbin"
for t in smtp-sink smtp-source postfix postconf; do
    command -v "$t" >/dev/null 2>&1 || die "$t is not installed: run scripts/install-test-deps.sh"
done

if [ "$ONLY" != postfix ]; then
    if [ -z "$RAVELIN" ]; then
        RAVELIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/ravelin"
        if [ ! -x "$RAVELIN" ]; then
            say "building $RAVELIN (cargo build --release -p ravelin)"
            (cd "$ROOT" && cargo build --release -p ravelin >&2)
        fi
    fi
    [ -x "$RAVELIN" ] || die "no ravelin binary at $RAVELIN"
fi

WORK=$(mktemp -d /tmp/ravelin-bench.XXXXXX)
chmod 0755 "$WORK"
SINK_PID=""
RAVELIN_PID=""
SAMPLER_PID=""

cleanup() {
    set +e
    [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null
    [ -n "$RAVELIN_PID" ] && kill -KILL "$RAVELIN_PID" 2>/dev/null
    [ -d "$WORK/postfix" ] && "$PFI" stop "$WORK/postfix" >/dev/null 2>&1
    [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null
    wait 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }

stop_sampler() {
    kill "$SAMPLER_PID" 2>/dev/null || true
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
}

# listening PORT: whether a socket listens on 127.0.0.1:PORT or *:PORT (no connection made).
listening() {
    local hex
    hex=$(printf '%04X' "$1")
    awk -v p=":$hex" 'NR > 1 && $4 == "0A" && ($2 == "0100007F" p || $2 == "00000000" p) { f = 1 }
        END { exit !f }' /proc/net/tcp
}

# free_port: a port on 127.0.0.1 with nothing listening, below the kernel's ephemeral range
# (32768 and up by default), where the relays' own outgoing connections could hold it and make
# a later bind fail with "Address already in use".
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((10000 + RANDOM % 22000))
        listening "$p" || { echo "$p"; return 0; }
    done
    die "no free port found"
}

# log_tail [LOG]: the last lines of LOG on a new line, for an error message ("" without LOG).
log_tail() {
    [ -n "${1:-}" ] || return 0
    printf '\n%s' "$(tail -n 20 "$1" 2>/dev/null || true)"
}

wait_listening() { # PORT PID WHAT [LOG]
    local deadline=$((SECONDS + 20))
    until listening "$1"; do
        kill -0 "$2" 2>/dev/null || die "$3 exited before listening on port $1$(log_tail "${4:-}")"
        [ $SECONDS -lt $deadline ] \
            || die "$3 is not listening on port $1 after 20 s$(log_tail "${4:-}")"
        sleep 0.05
    done
}

# sink_counter NAME: the sink's counter NAME so far (smtp-sink -c: sess, quit, mesg).
sink_counter() {
    local n
    n=$(tail -c 256 "$WORK/sink.out" 2>/dev/null | tr '\r' '\n' | grep -o "$1=[0-9]*" | tail -n 1 || true)
    n=${n#"$1"=}
    echo "${n:-0}"
}

# sink_count: messages the sink has completed so far.
sink_count() { sink_counter mesg; }

# sample_memory PID OUT: until killed, every 200 ms, append "rss_kib pss_kib" summed over
# PID and all its descendants to OUT. One awk per sample walks the process tree
# (/proc/P/task/P/children) and reads each /proc/P/smaps_rollup, so the sampler's own cost
# does not grow with the number of processes it measures.
sample_memory() {
    local root=$1 out=$2
    while kill -0 "$root" 2>/dev/null; do
        awk -v root="$root" 'BEGIN {
            q[1] = root; n = 1
            for (i = 1; i <= n; i++) {
                p = q[i]
                f = "/proc/" p "/task/" p "/children"
                while ((getline line < f) > 0) {
                    k = split(line, kids, " ")
                    for (j = 1; j <= k; j++) q[++n] = kids[j]
                }
                close(f)
                f = "/proc/" p "/smaps_rollup"
                while ((getline line < f) > 0) {
                    split(line, v, " ")
                    if (v[1] == "Rss:") rss += v[2]
                    else if (v[1] == "Pss:") pss += v[2]
                }
                close(f)
            }
            print rss + 0, pss + 0
        }' >>"$out" || true
        sleep 0.2
    done
}

peak_column() { # FILE COLUMN -> MiB with one decimal
    awk -v c="$2" '$c > m { m = $c } END { printf "%.1f", m / 1024 }' "$1"
}

# run_load NAME PORT: drive the load, print "elapsed accepted_elapsed".
run_load() {
    local name=$1 port=$2 base target t0 t_acc t_end limit rc
    base=$(sink_count)
    target=$((base + MESSAGES))
    limit=$((120 + MESSAGES / 20))
    say "$name: sending $MESSAGES x ${SIZE_KIB} KiB over $SESSIONS sessions to 127.0.0.1:$port"
    t0=$(now)
    set +e
    timeout "$limit" smtp-source -s "$SESSIONS" -m "$MESSAGES" -l $((SIZE_KIB * 1024)) \
        -f sender@example.net -t user@example.org "127.0.0.1:$port" \
        >"$WORK/$name.source.out" 2>"$WORK/$name.source.err"
    rc=$?
    set -e
    t_acc=$(now)
    [ $rc -eq 0 ] || die "$name: smtp-source failed ($rc): $(tail -n 5 "$WORK/$name.source.err")"
    local deadline=$((SECONDS + limit))
    while [ "$(sink_count)" -lt "$target" ]; do
        [ $SECONDS -lt $deadline ] \
            || die "$name: sink has $(( $(sink_count) - base )) of $MESSAGES messages after ${limit} s"
        sleep 0.05
    done
    t_end=$(now)
    awk -v a="$t0" -v b="$t_end" -v c="$t_acc" 'BEGIN { printf "%.3f %.3f\n", b - a, c - a }'
}

# sink_since NAME BASE: how much the sink's counter NAME grew since it was BASE, read once it
# has stopped moving (after the relay has stopped: a relay keeps connections open for reuse,
# and a duplicate delivery would come late).
sink_since() {
    local before=-1 n
    for _ in $(seq 1 50); do
        n=$(sink_counter "$1")
        [ "$n" = "$before" ] && break
        before=$n
        sleep 0.1
    done
    echo $((n - $2))
}

rate() { awk -v n="$MESSAGES" -v t="$1" 'BEGIN { printf "%.0f", n / t }'; }

# --- the sink ----------------------------------------------------------------------------
SINK_PORT=$(free_port)
smtp-sink -u nobody -c -h sink.bench.example "127.0.0.1:$SINK_PORT" 1024 \
    >"$WORK/sink.out" 2>"$WORK/sink.err" &
SINK_PID=$!
wait_listening "$SINK_PORT" "$SINK_PID" smtp-sink

PF_RATE=""; PF_MEM=""; PF_PSS=""; PF_GOT=""; RV_RATE=""; RV_MEM=""; RV_PSS=""; RV_GOT=""
PF_VERSION=$(postconf -d mail_version 2>/dev/null | awk '{ print $3 }')

# --- Postfix -----------------------------------------------------------------------------
if [ "$ONLY" != ravelin ]; then
    PF_PORT=$(free_port)
    "$PFI" create "$WORK/postfix" --port "$PF_PORT" --mode relay \
        --relayhost "127.0.0.1:$SINK_PORT" >/dev/null
    "$PFI" start "$WORK/postfix" >/dev/null
    PF_MASTER=$(tr -d ' \n' <"$WORK/postfix/queue/pid/master.pid")
    wait_listening "$PF_PORT" "$PF_MASTER" "Postfix"
    : >"$WORK/postfix.mem"
    sample_memory "$PF_MASTER" "$WORK/postfix.mem" &
    SAMPLER_PID=$!
    SESS0=$(sink_counter sess)
    MESG0=$(sink_count)
    result=$(run_load postfix "$PF_PORT")
    read -r PF_TIME PF_ACC <<<"$result"
    stop_sampler
    PF_RATE=$(rate "$PF_TIME")
    PF_MEM=$(peak_column "$WORK/postfix.mem" 1)
    PF_PSS=$(peak_column "$WORK/postfix.mem" 2)
    "$PFI" stop "$WORK/postfix" >/dev/null
    PF_SESS=$(sink_since sess "$SESS0")
    PF_GOT=$(sink_since mesg "$MESG0")
    echo "postfix $PF_VERSION: $MESSAGES messages in ${PF_TIME} s = $PF_RATE msg/s" \
        "(all accepted after ${PF_ACC} s); peak memory: Rss sum $PF_MEM MiB, Pss sum $PF_PSS MiB;" \
        "$PF_SESS connections to the sink; the sink received $PF_GOT of $MESSAGES messages"
fi

# --- Ravelin -----------------------------------------------------------------------------
if [ "$ONLY" != postfix ]; then
    RV_PORT=$(free_port)
    mkdir -p "$WORK/ravelin"
    chmod 0755 "$WORK/ravelin"
    cat >"$WORK/ravelin/ravelin.toml" <<TOML
hostname = "mx.bench.example"

[server]
user = "nobody"

[[listen]]
name = "mx"
address = "127.0.0.1:$RV_PORT"
kind = "inbound"
tls = "offer"

[inbound]
domains = ["example.org"]
backend = ["smtp://127.0.0.1:$SINK_PORT"]

[spool]
path = "$WORK/ravelin/spool"

[delivery]
retry_initial = "1s"

# Like the Postfix it is compared with: no sender authentication (whose lookups would also
# leave loopback).
[checks]
enabled = false

[log]
format = "json"
TOML
    "$RAVELIN" serve --config "$WORK/ravelin/ravelin.toml" \
        >"$WORK/ravelin/stdout.log" 2>"$WORK/ravelin/ravelin.log" &
    RAVELIN_PID=$!
    wait_listening "$RV_PORT" "$RAVELIN_PID" ravelin "$WORK/ravelin/ravelin.log"
    : >"$WORK/ravelin.mem"
    sample_memory "$RAVELIN_PID" "$WORK/ravelin.mem" &
    SAMPLER_PID=$!
    SESS0=$(sink_counter sess)
    MESG0=$(sink_count)
    result=$(run_load ravelin "$RV_PORT")
    read -r RV_TIME RV_ACC <<<"$result"
    stop_sampler
    RV_MEM=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$RAVELIN_PID/status")
    RV_PSS=$(peak_column "$WORK/ravelin.mem" 2)
    RV_RATE=$(rate "$RV_TIME")
    kill -TERM "$RAVELIN_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$RAVELIN_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$RAVELIN_PID" 2>/dev/null || true
    wait "$RAVELIN_PID" 2>/dev/null || true
    RAVELIN_PID=""
    RV_SESS=$(sink_since sess "$SESS0")
    RV_GOT=$(sink_since mesg "$MESG0")
    RV_VERSION=$("$RAVELIN" --version 2>/dev/null | awk '{ print $NF }' || true)
    # Group commit, from the stopped line: commits and removals per fsync of queue/.
    RV_GROUP=$({ grep '"event":"stopped"' "$WORK/ravelin/ravelin.log" || true; } | tail -n 1 \
        | sed -n 's/.*"spool_dir_syncs":\([0-9]*\).*"spool_synced":\([0-9]*\).*/\2 in \1/p')
    echo "ravelin ${RV_VERSION:-?}: $MESSAGES messages in ${RV_TIME} s = $RV_RATE msg/s" \
        "(all accepted after ${RV_ACC} s); peak memory: VmHWM $RV_MEM MiB, Pss $RV_PSS MiB;" \
        "$RV_SESS connections to the sink; spool commits and removals in queue/ fsyncs:" \
        "${RV_GROUP:-unknown}; the sink received $RV_GOT of $MESSAGES messages"
fi

# --- summary -----------------------------------------------------------------------------
RATIO="n/a"; MEM_RATIO="n/a"
if [ -n "$PF_RATE" ] && [ -n "$RV_RATE" ]; then
    RATIO=$(awk -v a="$RV_RATE" -v b="$PF_RATE" 'BEGIN { printf "%.2f", a / b }')
    MEM_RATIO=$(awk -v a="$RV_PSS" -v b="$PF_PSS" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }')
    echo "ratio ravelin/postfix: throughput ${RATIO}x, peak memory (Pss) ${MEM_RATIO}x"
fi

CPU=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
MEM_GIB=$(awk '/^MemTotal:/ { printf "%.0f", $2 / 1048576 }' /proc/meminfo)
MACHINE="$(nproc) x ${CPU:-unknown CPU}, ${MEM_GIB} GiB, $(uname -r)"
FS=$(df -PT "$WORK" | awk 'NR == 2 { print $2 " on " $1 }')
echo "machine: $MACHINE; queues on ${FS:-unknown file system}; Postfix $PF_VERSION"
echo
echo "| date | machine | messages | size | sessions | postfix msg/s | ravelin msg/s | ratio | postfix peak Pss MiB | ravelin peak Pss MiB | ravelin VmHWM MiB |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
echo "| $(date -u +%Y-%m-%d) | $MACHINE | $MESSAGES | ${SIZE_KIB} KiB | $SESSIONS |" \
    "${PF_RATE:-n/a} | ${RV_RATE:-n/a} | $RATIO | ${PF_PSS:-n/a} | ${RV_PSS:-n/a} | ${RV_MEM:-n/a} |"

# Both relays must have delivered every message exactly once (the sink's count, read after
# each relay stopped); otherwise the numbers above mean nothing.
STATUS=0
for got in "postfix:$PF_GOT" "ravelin:$RV_GOT"; do
    name=${got%%:*}
    n=${got#*:}
    if [ -n "$n" ] && [ "$n" != "$MESSAGES" ]; then
        echo "relay-throughput: error: the sink received $n messages from $name, not $MESSAGES" >&2
        STATUS=1
    fi
done
exit "$STATUS"
