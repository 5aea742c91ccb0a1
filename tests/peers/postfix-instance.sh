#!/usr/bin/env bash
# postfix-instance.sh: create, start and stop a private Postfix instance for tests and benchmarks.
#
#   postfix-instance.sh create DIR --port N [--address A] --mode backend|relay [options]
#   postfix-instance.sh start DIR
#   postfix-instance.sh stop DIR
#   postfix-instance.sh status DIR
#
# Everything the instance owns lives under DIR: etc/ (config_directory), queue/
# (queue_directory), data/ (data_directory), mail/ (Maildir delivery, backend mode) and
# maillog (written by postlogd). The only network listener is smtpd on 127.0.0.1:N (or --address A); every
# other service is a UNIX-domain socket under queue/. No DNS is used.
#
# Modes:
#   backend  accepts mail for --domain (default example.org) for the --users listed
#            (default "user"), rejects every other recipient with 550 at RCPT, and delivers
#            with virtual(8) into DIR/mail/DOMAIN/USER/ (Maildir, owned by nobody).
#            Nothing is relayed and nothing leaves: all other transports are error:.
#   relay    accepts everything from 127.0.0.0/8 and relays it to --relayhost
#            ([127.0.0.1]:PORT), with Postfix's default queue durability (fsync).
#
# Options for create:
#   --port N              smtpd port (required)
#   --address A           the loopback address smtpd listens on (default 127.0.0.1)
#   --mode backend|relay  (required)
#   --relayhost IP:PORT   next hop, required for relay mode
#   --domain NAME         accepted domain in backend mode (default example.org)
#   --users a,b           mailboxes in backend mode (default user)
#   --hostname NAME       myhostname (default backend.test.example / relay.test.example)
#   --set NAME=VALUE      main.cf setting applied last, replacing the generated value of the
#                         same name if there is one (repeatable)
#
# Bare LF: smtpd_forbid_bare_newline = reject with an empty exclusion list, so the instance
# refuses any command or message line ending in a bare LF, from loopback clients too
# (Postfix's default exempts $mynetworks; "yes" only means "normalize").
#
# Must run as root (Postfix's master drops to mail_owner=postfix). Fails with a message
# naming scripts/install-test-deps.sh when Postfix is not installed.
set -euo pipefail
PATH="$PATH:/usr/sbin:/sbin"

die() { echo "postfix-instance: $*" >&2; exit 1; }

need_postfix() {
    command -v postfix >/dev/null 2>&1 && command -v postconf >/dev/null 2>&1 \
        || die "Postfix is not installed; run scripts/install-test-deps.sh"
    [ "$(id -u)" -eq 0 ] || die "must run as root (Postfix's master needs it)"
}

abs_dir() {
    [ -n "${1:-}" ] || die "missing DIR"
    mkdir -p "$1"
    (cd "$1" && pwd -P)
}

# master_pid DIR: the pid of the instance's master, if it is running.
master_pid() {
    local pidfile="$1/queue/pid/master.pid" pid
    [ -r "$pidfile" ] || return 1
    pid=$(tr -d ' \n' <"$pidfile")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

cmd_create() {
    local dir port="" address="127.0.0.1" mode="" relayhost="" domain="example.org" users="user" hostname=""
    local -a extra=()
    dir=$(abs_dir "${1:-}"); shift || true
    while [ $# -gt 0 ]; do
        case "$1" in
            --port) port="${2:?}"; shift 2 ;;
            --address) address="${2:?}"; shift 2 ;;
            --mode) mode="${2:?}"; shift 2 ;;
            --relayhost) relayhost="${2:?}"; shift 2 ;;
            --domain) domain="${2:?}"; shift 2 ;;
            --users) users="${2:?}"; shift 2 ;;
            --hostname) hostname="${2:?}"; shift 2 ;;
            --set) extra+=("${2:?}"); shift 2 ;;
            *) die "unknown option: $1" ;;
        esac
    done
    [[ "$port" =~ ^[0-9]+$ ]] && [ "$port" -ge 1 ] && [ "$port" -le 65535 ] \
        || die "--port N (1-65535) is required"
    [[ "$address" =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] \
        || die "--address must be a 127.x.y.z loopback address, got: $address"
    case "$mode" in
        backend) hostname="${hostname:-backend.test.example}" ;;
        relay)
            [[ "$relayhost" =~ ^127\.[0-9]+\.[0-9]+\.[0-9]+:[0-9]+$ ]] \
                || die "relay mode needs --relayhost 127.x.y.z:PORT (loopback only)"
            hostname="${hostname:-relay.test.example}" ;;
        *) die "--mode backend|relay is required" ;;
    esac
    [[ "$domain" =~ ^[A-Za-z0-9.-]+$ ]] || die "bad --domain: $domain"
    [[ "$users" =~ ^[A-Za-z0-9._+-]+(,[A-Za-z0-9._+-]+)*$ ]] || die "bad --users: $users"
    master_pid "$dir" >/dev/null && die "an instance is running in $dir; stop it first"

    # Postfix daemons run as postfix and nobody and must reach DIR from /.
    chmod 0755 "$dir"
    mkdir -p "$dir/etc" "$dir/queue" "$dir/data" "$dir/mail"
    chown root:root "$dir/etc" "$dir/queue"
    chmod 0755 "$dir/etc" "$dir/queue"
    chown postfix:postfix "$dir/data"
    chmod 0700 "$dir/data"
    chown nobody:nogroup "$dir/mail" 2>/dev/null || chown nobody "$dir/mail"
    chmod 0700 "$dir/mail"
    : >"$dir/maillog"

    local nobody_uid nobody_gid
    nobody_uid=$(id -u nobody)
    nobody_gid=$(id -g nobody)

    cat >"$dir/etc/main.cf" <<CF
# Generated by tests/peers/postfix-instance.sh ($mode mode). Do not edit; re-create instead.
compatibility_level = 3.6
config_directory = $dir/etc
queue_directory = $dir/queue
data_directory = $dir/data
mail_owner = postfix
setgid_group = postdrop
default_privs = nobody
syslog_name = postfix-$port
maillog_file = $dir/maillog
maillog_file_prefixes = $dir
myhostname = $hostname
mydomain = test.example
myorigin = \$myhostname
mydestination =
# inet_interfaces names interface addresses (lo has 127.0.0.1 only); master.cf below binds
# the --address, which may be any 127.x.y.z.
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
alias_maps =
alias_database =
local_recipient_maps =
biff = no
append_dot_mydomain = no
smtputf8_enable = yes
smtpd_banner = \$myhostname ESMTP
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
lmtp_host_lookup = native
# Deliver what the client sent: no header rewriting or added headers for loopback clients.
local_header_rewrite_clients =
always_add_missing_headers = no
# Postfix's own strictness applies to loopback clients too (see DESIGN.md).
smtpd_forbid_bare_newline = reject
smtpd_forbid_bare_newline_exclusions =
CF

    if [ "$mode" = backend ]; then
        local u
        : >"$dir/etc/vmailbox"
        for u in ${users//,/ }; do
            echo "$u@$domain $domain/$u/" >>"$dir/etc/vmailbox"
        done
        cat >>"$dir/etc/main.cf" <<CF
relay_domains =
smtpd_relay_restrictions = reject_unauth_destination
virtual_mailbox_domains = $domain
virtual_mailbox_base = $dir/mail
virtual_mailbox_maps = texthash:$dir/etc/vmailbox
virtual_alias_maps =
virtual_uid_maps = static:$nobody_uid
virtual_gid_maps = static:$nobody_gid
virtual_minimum_uid = 1
# Nothing leaves a backend instance.
default_transport = error:backend test instance does not relay
relay_transport = error:backend test instance does not relay
CF
    else
        cat >>"$dir/etc/main.cf" <<CF
relay_domains =
relayhost = [${relayhost%:*}]:${relayhost##*:}
smtpd_relay_restrictions = permit_mynetworks, reject
CF
    fi

    local kv
    for kv in "${extra[@]}"; do
        [[ "$kv" == *=* ]] || die "--set wants NAME=VALUE, got: $kv"
        # postconf -e replaces a generated setting of the same name instead of adding a
        # second one (which postconf would warn about).
        postconf -c "$dir/etc" -e "${kv%%=*} = ${kv#*=}" \
            || die "cannot apply --set $kv"
    done

    cat >"$dir/etc/master.cf" <<CF
# Generated by tests/peers/postfix-instance.sh. One network listener; no chroot.
# service         type  private unpriv  chroot  wakeup  maxproc command
$address:$port   inet  n       -       n       -       -       smtpd
pickup            unix  n       -       n       60      1       pickup
cleanup           unix  n       -       n       -       0       cleanup
qmgr              unix  n       -       n       300     1       qmgr
tlsmgr            unix  -       -       n       1000?   1       tlsmgr
rewrite           unix  -       -       n       -       -       trivial-rewrite
bounce            unix  -       -       n       -       0       bounce
defer             unix  -       -       n       -       0       bounce
trace             unix  -       -       n       -       0       bounce
verify            unix  -       -       n       -       1       verify
flush             unix  n       -       n       1000?   0       flush
proxymap          unix  -       -       n       -       -       proxymap
proxywrite        unix  -       -       n       -       1       proxymap
smtp              unix  -       -       n       -       -       smtp
relay             unix  -       -       n       -       -       smtp
showq             unix  n       -       n       -       -       showq
error             unix  -       -       n       -       -       error
retry             unix  -       -       n       -       -       error
discard           unix  -       -       n       -       -       discard
local             unix  -       n       n       -       -       local
virtual           unix  -       n       n       -       -       virtual
lmtp              unix  -       -       n       -       -       lmtp
anvil             unix  -       -       n       -       1       anvil
scache            unix  -       -       n       -       1       scache
postlog           unix-dgram n  -       n       -       1       postlogd
CF
    chmod 0644 "$dir/etc/main.cf" "$dir/etc/master.cf"
    [ -f "$dir/etc/vmailbox" ] && chmod 0644 "$dir/etc/vmailbox"

    local errors
    errors=$(postconf -c "$dir/etc" -n 2>&1 >/dev/null | grep -v '^$' || true)
    [ -z "$errors" ] || die "postconf reports: $errors"
    echo "created $mode instance in $dir (smtpd on $address:$port)"
}

cmd_start() {
    local dir pid
    dir=$(abs_dir "${1:-}")
    [ -f "$dir/etc/main.cf" ] || die "no instance in $dir; run create first"
    if pid=$(master_pid "$dir"); then
        echo "already running in $dir (master pid $pid)"
        return 0
    fi
    postfix -c "$dir/etc" start >>"$dir/start.log" 2>&1 \
        || die "postfix start failed: $(tail -n 20 "$dir/start.log") $(tail -n 20 "$dir/maillog")"
    for _ in $(seq 1 100); do
        if pid=$(master_pid "$dir"); then
            echo "started $dir (master pid $pid)"
            return 0
        fi
        sleep 0.1
    done
    die "master did not start: $(tail -n 20 "$dir/maillog")"
}

cmd_stop() {
    local dir pid
    dir=$(abs_dir "${1:-}")
    if ! pid=$(master_pid "$dir"); then
        echo "not running in $dir"
        return 0
    fi
    postfix -c "$dir/etc" stop >>"$dir/start.log" 2>&1 || true
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || { echo "stopped $dir"; return 0; }
        sleep 0.1
    done
    # The master did not go within 10 s: take down its process group (the master is a
    # session leader; its daemons share the group).
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    echo "killed $dir (master pid $pid did not stop within 10 s)"
}

cmd_status() {
    local dir pid
    dir=$(abs_dir "${1:-}")
    if pid=$(master_pid "$dir"); then echo "running (master pid $pid)"; else echo "stopped"; return 1; fi
}

main() {
    local cmd="${1:-}"
    shift || true
    need_postfix
    case "$cmd" in
        create) cmd_create "$@" ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        *) die "usage: $0 create DIR --port N [--address A] --mode backend|relay [--relayhost IP:PORT] [--domain D] [--users a,b] [--hostname H] [--set K=V] | start DIR | stop DIR | status DIR" ;;
    esac
}

main "$@"
