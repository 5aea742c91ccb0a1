#!/usr/bin/env bash
# install-test-deps.sh: install the real peers the end-to-end tests and benchmarks talk to.
#
# Debian packages: postfix (smtp-sink, smtp-source, posttls-finger and an alternate
# instance per test), swaks, libnet-ssleay-perl and libio-socket-ssl-perl (swaks' TLS),
# openssl, python3-venv, unbound (a local DNS server for the auditor's --nameserver tests;
# the system service is left as the package sets it, tests start their own). Postfix is preseeded to "No configuration" and the system
# instance is kept stopped and disabled: tests start their own instances on high ports.
# Python: a venv in .venv/ at the repository root with dkimpy and dnspython, the
# independent DKIM verifier.
#
# Idempotent and quick when everything is present: apt-get update runs only when a package
# is missing. Needs root (or sudo) only when something has to be installed. Exits non-zero
# with the failing step's message otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
VENV="$ROOT/.venv"
PY_PACKAGES=(dkimpy dnspython)
DEB_PACKAGES=(postfix swaks libnet-ssleay-perl libio-socket-ssl-perl openssl python3-venv unbound)

say() { echo "install-test-deps: $*"; }
die() { echo "install-test-deps: error: $*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $*"
    fi
}

deb_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q '^install ok installed$'
}

install_debs() {
    local missing=() p
    for p in "${DEB_PACKAGES[@]}"; do
        deb_installed "$p" || missing+=("$p")
    done
    if [ ${#missing[@]} -eq 0 ]; then
        say "Debian packages present: ${DEB_PACKAGES[*]}"
        return
    fi
    say "installing Debian packages: ${missing[*]}"
    # "No configuration": the package writes no main.cf and starts no system instance.
    echo "postfix postfix/main_mailer_type select No configuration" | as_root debconf-set-selections
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
    for p in "${missing[@]}"; do
        deb_installed "$p" || die "package $p did not install"
    done
    say "installed: ${missing[*]}"
}

check_tools() {
    local t
    for t in postfix postconf smtp-sink smtp-source posttls-finger swaks openssl unbound; do
        command -v "$t" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$t" >/dev/null 2>&1 \
            || die "$t not found after installation"
    done
}

# The system Postfix instance must neither run nor start at boot: tests run their own.
quiet_system_postfix() {
    local pidfile=/var/spool/postfix/pid/master.pid pid
    if [ -r "$pidfile" ] && pid=$(tr -d ' \n' <"$pidfile") && [ -n "$pid" ] \
        && kill -0 "$pid" 2>/dev/null; then
        say "stopping the system Postfix instance (master pid $pid)"
        as_root postfix stop >/dev/null 2>&1 || as_root kill "$pid"
    fi
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        if systemctl is-enabled --quiet postfix 2>/dev/null; then
            as_root systemctl disable --now postfix >/dev/null 2>&1 || true
            say "disabled the system Postfix service (systemd)"
        fi
    elif ls /etc/rc[2-5].d/S*postfix >/dev/null 2>&1 && command -v update-rc.d >/dev/null 2>&1; then
        as_root update-rc.d postfix disable >/dev/null 2>&1 || true
        say "disabled the system Postfix service (init scripts)"
    fi
}

install_venv() {
    local py
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import dkim, dns.resolver' 2>/dev/null; then
        say "Python venv present: .venv (${PY_PACKAGES[*]})"
        return
    fi
    py=$(command -v python3 || true)
    [ -n "$py" ] || die "python3 not found"
    if [ ! -x "$VENV/bin/python" ]; then
        rm -rf "$VENV"
        "$py" -m venv "$VENV" || { rm -rf "$VENV"; /usr/bin/python3 -m venv "$VENV"; } \
            || die "could not create a venv in .venv"
        say "created Python venv .venv ($("$VENV/bin/python" --version 2>&1))"
    fi
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}" \
        || die "pip install ${PY_PACKAGES[*]} failed"
    "$VENV/bin/python" -c 'import dkim, dns.resolver' || die "dkimpy/dnspython not importable"
    say "installed into .venv: ${PY_PACKAGES[*]}"
}

install_debs
check_tools
quiet_system_postfix
install_venv
say "ready"
