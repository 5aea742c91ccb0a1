#!/usr/bin/env bash
# install-test-deps.sh: install the real peers the end-to-end tests and benchmarks talk to.
#
# Debian packages:
# - postfix (smtp-sink, smtp-source, posttls-finger and an alternate instance per test),
#   preseeded to "No configuration"; swaks with libnet-ssleay-perl and libio-socket-ssl-perl
#   (its TLS) and libio-socket-inet6-perl (its IPv6; only a Recommends); openssl; python3-venv.
# - redis-server: the shared state store of the cluster tests.
# - slapd (preseeded to create no database) and ldap-utils: LDAP for AUTH and recipients.
# - unbound, nsd, ldnsutils (ldns-keygen, ldns-signzone): DNSSEC test zones for DANE.
# - dovecot-imapd, dovecot-pop3d: IMAP / POP3 listeners for the auditor's port checks, and
#   (dovecot-core) the SASL server of the Postfix that offers AUTH before TLS.
# - chromium: headless browser that opens the auditor's HTML report (DOM dump, screenshot).
# - nginx-light: the MTA-STS policy hosts of bench/audit-batch.py (and its smoke test).
# The system instances of all of them are stopped and disabled: every test starts its own
# on a high loopback port.
# Python: a venv in .venv/ at the repository root with dkimpy (+ PyNaCl for Ed25519) and
# dnspython, the independent DKIM verifier; jsonschema validates the auditor's SARIF against
# the SARIF 2.1.0 schema in crates/ravelin/tests/fixtures/.
#
# Idempotent and quick when everything is present: apt-get update runs only when a package
# is missing. Needs root (or sudo) only when something has to be installed. Exits non-zero
# with the failing step's message otherwise.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
VENV="$ROOT/.venv"
PY_PACKAGES=(dkimpy dnspython pynacl authres checkdmarc jsonschema)
DEB_PACKAGES=(postfix swaks libnet-ssleay-perl libio-socket-ssl-perl libio-socket-inet6-perl openssl python3-venv)
DEB_PACKAGES+=(redis-server)
DEB_PACKAGES+=(slapd ldap-utils)
DEB_PACKAGES+=(unbound ldnsutils nsd)
DEB_PACKAGES+=(dovecot-imapd dovecot-pop3d)
# The Postfix sender-authentication stack of bench/inbound-checks.py.
DEB_PACKAGES+=(postfix-policyd-spf-python opendkim opendmarc publicsuffix)
# Headless browser for the HTML report test (tests/audit.rs); started per test, no service.
DEB_PACKAGES+=(chromium)
# The MTA-STS policy hosts of bench/audit-batch.py: one HTTPS server block per host.
DEB_PACKAGES+=(nginx-light)
# ip(8): the network namespace of the IPv6 end-to-end tests (crates/ravelin/tests/ipv6.rs).
DEB_PACKAGES+=(iproute2)

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
    echo "slapd slapd/no_configuration boolean true" | as_root debconf-set-selections
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
    for t in postfix postconf smtp-sink smtp-source posttls-finger swaks openssl \
        redis-server slapd slapadd ldapsearch unbound nsd ldns-keygen ldns-signzone dovecot chromium nginx; do
        command -v "$t" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$t" >/dev/null 2>&1 \
            || die "$t not found after installation"
    done
}

# quiet_system SERVICE PIDFILE...: the system instance of SERVICE must neither run nor start
# at boot (tests run their own on high ports): a running daemon named by one of the pid files
# is stopped, and the boot service disabled (systemd or init scripts).
quiet_system() {
    local service="$1" pidfile pid
    shift
    for pidfile in "$@"; do
        if [ -r "$pidfile" ] && pid=$(tr -d ' \n' <"$pidfile") && [ -n "$pid" ] \
            && kill -0 "$pid" 2>/dev/null; then
            say "stopping the system $service (pid $pid)"
            as_root kill "$pid" || true
        fi
    done
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        if systemctl is-enabled --quiet "$service" 2>/dev/null \
            || systemctl is-active --quiet "$service" 2>/dev/null; then
            as_root systemctl disable --now "$service" >/dev/null 2>&1 || true
            say "stopped and disabled the system $service service (systemd)"
        fi
    elif ls /etc/rc[2-5].d/S*"$service" >/dev/null 2>&1 && command -v update-rc.d >/dev/null 2>&1; then
        as_root service "$service" stop >/dev/null 2>&1 || true
        as_root update-rc.d "$service" disable >/dev/null 2>&1 || true
        say "stopped and disabled the system $service service (init scripts)"
    fi
}

quiet_system_services() {
    if [ -r /var/spool/postfix/pid/master.pid ]; then
        as_root postfix stop >/dev/null 2>&1 || true
    fi
    quiet_system postfix /var/spool/postfix/pid/master.pid
    quiet_system redis-server /run/redis/redis-server.pid
    quiet_system slapd /run/slapd/slapd.pid
    quiet_system unbound /run/unbound.pid /run/unbound/unbound.pid
    quiet_system nsd /run/nsd.pid /run/nsd/nsd.pid
    quiet_system dovecot /run/dovecot/master.pid
    quiet_system opendkim /run/opendkim/opendkim.pid
    quiet_system opendmarc /run/opendmarc/opendmarc.pid
    quiet_system nginx /run/nginx.pid
}

install_venv() {
    local py
    if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import dkim, dns.resolver, nacl.signing, authres, checkdmarc, jsonschema' 2>/dev/null; then
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
    "$VENV/bin/python" -c 'import dkim, dns.resolver, nacl.signing, authres, checkdmarc, jsonschema' || die "dkimpy/dnspython/authres/checkdmarc/jsonschema not importable"
    say "installed into .venv: ${PY_PACKAGES[*]}"
}

install_debs
check_tools
quiet_system_services
install_venv
say "ready"
