//! Tests of the configuration: valid files, every class of error with its exact line, and
//! `load`'s path handling.

use std::net::IpAddr;
use std::time::Duration;

use super::*;

/// The errors of `text`, as (line, message, fix).
fn errors(text: &str) -> Vec<(usize, String, String)> {
    match Config::parse(text, "ravelin.toml") {
        Ok(c) => panic!("expected errors, got {c:?}"),
        Err(ConfigErrors(list)) => list
            .into_iter()
            .map(|e| (e.line, e.message, e.fix))
            .collect(),
    }
}

/// The single error of `text`.
fn error(text: &str) -> (usize, String, String) {
    let mut list = errors(text);
    assert_eq!(list.len(), 1, "{list:#?}");
    list.remove(0)
}

const MINIMAL: &str = r#"
hostname = "mx1.example.org"

[[listen]]
name = "mx"
address = "127.0.0.1:2525"
kind = "inbound"

[inbound]
domains = ["Example.ORG"]
backend = ["smtp://127.0.0.1:10025"]
"#;

#[test]
fn minimal_file_gets_hardened_defaults() {
    let c = Config::parse(MINIMAL, "ravelin.toml").unwrap();
    assert_eq!(c.hostname, "mx1.example.org");
    assert_eq!(c.listen.len(), 1);
    let l = &c.listen[0];
    assert_eq!(l.kind, ListenKind::Inbound);
    assert_eq!(l.tls, None);
    assert_eq!(l.tls_mode(), TlsMode::Offer);
    assert_eq!(l.max_connections, 500);
    assert_eq!(c.inbound.domains, vec!["example.org"]);
    assert!(crate::relay::RelayPolicy::new(&c.inbound.domains).accepts_domain("EXAMPLE.org"));
    assert_eq!(
        c.inbound.backend,
        vec![BackendUrl {
            host: "127.0.0.1".into(),
            port: 10025
        }]
    );
    assert_eq!(c.inbound.backend_tls, NextHopTls::May);
    assert!(c.inbound.received_client);
    assert_eq!(c.outbound.smart_host_tls, NextHopTls::Encrypt);
    assert!(c.outbound.dane && c.outbound.mta_sts);
    assert_eq!(c.outbound.extra_ca_file, None);
    assert_eq!(c.outbound.mta_sts_port, 443);
    assert_eq!(c.delivery.smtp_port, 25);
    assert_eq!(c.server.user, "ravelin");
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.limits.message_size, 26_214_400);
    assert_eq!(c.limits.session_timeout.get(), Duration::from_secs(1800));
    assert_eq!(c.limits.min_data_rate, 500);
    assert_eq!(
        c.delivery.max_lifetime.get(),
        Duration::from_secs(5 * 86_400)
    );
    assert_eq!(c.spool.path, PathBuf::from("/var/spool/ravelin"));
    assert_eq!(c.log.format, LogFormat::Json);
    assert_eq!(c.log.level, "info");
    assert!(c.dns.nameservers.is_empty());
    assert!(c.tls.is_none());
    assert!(c.source.is_none());
}

const FULL: &str = r#"
hostname = "MX1.Example.org"

[server]
user = "mail"
group = "mail"
pid_file = "/run/ravelin.pid"

[[listen]]
name = "mx"
address = "127.0.0.1:2525"
kind = "inbound"
tls = "require"
max_connections = 100

[[listen]]
name = "submission"
address = "[::1]:2587"
kind = "submission"

[[listen]]
name = "smtps"
address = "127.0.0.1:2465"
kind = "submissions"

[[listen]]
name = "relay"
address = "127.0.0.2:2525"
kind = "relay"
tls = "off"

[tls]
certificate = "/etc/ravelin/fullchain.pem"
private_key = "/etc/ravelin/key.pem"

[inbound]
domains = ["example.org", "example.net"]
backend = ["smtp://mail.example.org", "smtp://[::1]:2526"]
backend_tls = "verify"
backend_ca_file = "/etc/ravelin/ca.pem"
received_client = false

[outbound]
trusted_networks = ["10.0.0.0/8", "192.0.2.25", "2001:db8::/32"]
smart_host = "smtp://smarthost.example.net:587"
smart_host_tls = "verify"
dane = false
mta_sts = false
extra_ca_file = "/etc/ravelin/extra-ca.pem"
mta_sts_port = 8443

[limits]
message_size = 10485760
recipients = 50
soft_errors = 2
hard_errors = 5
command_timeout = "1m"
data_timeout = "10m"
min_data_rate = 1000
session_timeout = "1h"
line_length = 2048

[spool]
path = "/srv/spool"

[delivery]
concurrency = 4
smtp_port = 2525
connect_timeout = "10s"
command_timeout = "2m"
idle_timeout = "5s"
retry_initial = "1m"
retry_max = "2h"
max_lifetime = "3d"
scan_interval = "15s"

[log]
format = "text"
level = "debug"

[dns]
nameservers = ["127.0.0.1:5353", "[::1]:53"]

[auth]
users_file = "/etc/ravelin/users"
max_parallel_checks = 2
sender_map = { "alice@example.org" = ["sales@example.org", "@example.net"] }

[auth.ldap]
url = "ldaps://dc1.example.org"
bind_dn_template = "{user}"
ca_file = "/etc/ravelin/ldap-ca.pem"
timeout = "5s"
"#;

#[test]
fn full_file_sets_every_key() {
    let c = Config::parse(FULL, "ravelin.toml").unwrap();
    assert_eq!(c.hostname, "mx1.example.org");
    assert_eq!(c.server.user, "mail");
    assert_eq!(c.server.group.as_deref(), Some("mail"));
    assert_eq!(c.server.pid_file, Some(PathBuf::from("/run/ravelin.pid")));
    let modes: Vec<_> = c.listen.iter().map(Listen::tls_mode).collect();
    assert_eq!(
        modes,
        [
            TlsMode::Require,
            TlsMode::Require,
            TlsMode::Implicit,
            TlsMode::Off
        ]
    );
    assert_eq!(c.listen[0].max_connections, 100);
    assert_eq!(c.listen[1].address, "[::1]:2587".parse().unwrap());
    let tls = c.tls.as_ref().unwrap();
    assert_eq!(tls.private_key, PathBuf::from("/etc/ravelin/key.pem"));
    assert_eq!(c.inbound.backend[0].authority(), "mail.example.org:25");
    assert_eq!(c.inbound.backend[1].authority(), "[::1]:2526");
    assert_eq!(c.inbound.backend_tls, NextHopTls::Verify);
    assert!(!c.inbound.received_client);
    let trusted = |ip: &str| c.outbound.is_trusted(ip.parse::<IpAddr>().unwrap());
    assert!(trusted("10.1.2.3") && trusted("192.0.2.25") && trusted("2001:db8::7"));
    assert!(!trusted("192.0.2.26") && !trusted("127.0.0.1"));
    assert_eq!(
        c.outbound
            .smart_host
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("smtp://smarthost.example.net:587")
    );
    assert_eq!(c.limits.line_length, 2048);
    assert_eq!(c.limits.hard_errors, 5);
    assert_eq!(c.limits.min_data_rate, 1000);
    assert_eq!(c.delivery.retry_max.get(), Duration::from_secs(7200));
    assert_eq!(c.delivery.concurrency, 4);
    assert_eq!(c.delivery.smtp_port, 2525);
    assert!(!c.outbound.dane && !c.outbound.mta_sts);
    assert_eq!(
        c.outbound.extra_ca_file,
        Some(PathBuf::from("/etc/ravelin/extra-ca.pem"))
    );
    assert_eq!(c.outbound.mta_sts_port, 8443);
    assert_eq!(c.spool.path, PathBuf::from("/srv/spool"));
    assert_eq!(c.log.format, LogFormat::Text);
    assert_eq!(c.dns.nameservers.len(), 2);
    assert_eq!(c.auth.users_file, Some(PathBuf::from("/etc/ravelin/users")));
    assert_eq!(c.auth.max_parallel_checks, 2);
    assert_eq!(c.auth.sender_map["alice@example.org"].len(), 2);
    let ldap = c.auth.ldap.as_ref().unwrap();
    assert_eq!(ldap.bind_dn_template.as_deref(), Some("{user}"));
    assert_eq!(ldap.timeout.get(), Duration::from_secs(5));
    assert_eq!(ldap.search_filter, "(uid={user})");
}

#[test]
fn auth_checks() {
    let listeners = "\n[[listen]]\nname = \"sub\"\naddress = \"127.0.0.1:2587\"\nkind = \"submission\"\ntls = \"off\"\n";
    let list = errors(&format!("{MINIMAL}{listeners}"));
    let messages: Vec<&str> = list.iter().map(|e| e.1.as_str()).collect();
    assert!(
        messages
            .iter()
            .any(|m| m.contains("with tls = \"off\": AUTH is only offered inside TLS")),
        "{list:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains("[auth] has neither users_file nor ldap")),
        "{list:#?}"
    );
    let ldap = |body: &str| errors(&format!("{MINIMAL}\n[auth.ldap]\n{body}"));
    let list = ldap("url = \"ldap://dc1.example.org\"\nbind_dn_template = \"uid=x\"\n");
    assert_eq!(list.len(), 2, "{list:#?}");
    assert!(list[0].1.contains("clear text"), "{list:#?}");
    assert!(list[1].1.contains("has no {user}"), "{list:#?}");
    let list = ldap("url = \"ldap://127.0.0.1:3389\"\n");
    assert_eq!(list.len(), 1, "{list:#?}");
    assert!(
        list[0]
            .1
            .contains("exactly one of bind_dn_template and search_base")
    );
    let list = ldap(
        "url = \"ldap://dc1\"\nstarttls = true\nsearch_base = \"dc=x\"\nsearch_bind_dn = \"cn=svc\"\n",
    );
    assert_eq!(list.len(), 1, "{list:#?}");
    assert!(list[0].1.contains("go together"));
    let list = errors(&format!(
        "{MINIMAL}\n[auth]\nsender_map = {{ \"a\" = [\"nodomain\"] }}\n"
    ));
    assert!(
        list[0].1.contains("is not an address or @domain"),
        "{list:#?}"
    );
    let list = errors(&format!("{MINIMAL}\n[limits]\nauth_failures = 0\n"));
    assert!(list[0].1.contains("limits.auth_failures is 0"), "{list:#?}");
    let list = errors(&format!("{MINIMAL}\n[limits]\nmin_data_rate = 5000000\n"));
    assert_eq!(list.len(), 1, "{list:#?}");
    assert!(
        list[0]
            .1
            .contains("limits.min_data_rate = 5000000 is above"),
        "{list:#?}"
    );
    let off = Config::parse(
        &format!("{MINIMAL}\n[limits]\nmin_data_rate = 0\n"),
        "ravelin.toml",
    );
    assert_eq!(off.map(|c| c.limits.min_data_rate).ok(), Some(0));
}

#[test]
fn recipients_checks() {
    let r = |body: &str| errors(&format!("{MINIMAL}\n[recipients]\n{body}"));
    let list = r("sources = [\"file\", \"file\"]\n");
    assert_eq!(list.len(), 2, "{list:#?}");
    assert!(list[0].1.contains("lists \"file\" twice"), "{list:#?}");
    assert!(
        list[1].1.contains("recipients.file is not set"),
        "{list:#?}"
    );
    assert_eq!(list[0].0, 14);
    let list = r("file = \"r.txt\"\n");
    assert!(
        list[0].1.contains("\"file\" is not in recipients.sources"),
        "{list:#?}"
    );
    assert_eq!(list[0].0, 14);
    let list = r(
        "sources = [\"ldap\", \"callout\"]\nharvest_threshold = 0\n[recipients.callout]\nnegative_ttl = \"0s\"\n",
    );
    assert_eq!(list.len(), 3, "{list:#?}");
    assert!(
        list[0].1.contains("[recipients.ldap] is not set"),
        "{list:#?}"
    );
    assert!(list[1].1.contains("harvest_threshold is 0"), "{list:#?}");
    assert!(list[2].1.contains("negative_ttl is 0s"), "{list:#?}");
    assert_eq!(list[2].0, 17);
    let list = r(
        "sources = [\"ldap\"]\n[recipients.ldap]\nurl = \"ldap://dc1.example.org\"\nbase = \"dc=x\"\nfilter = \"(mail=x)\"\nbind_dn = \"cn=svc\"\n",
    );
    assert_eq!(list.len(), 3, "{list:#?}");
    assert!(
        list[0].1.contains("recipients.ldap.url") && list[0].1.contains("clear text"),
        "{list:#?}"
    );
    assert!(list[1].1.contains("has no {address}"), "{list:#?}");
    assert!(list[2].1.contains("go together"), "{list:#?}");
    let list = r("sources = [\"nis\"]\n");
    assert!(list[0].1.contains("nis"), "{list:#?}");
    let c = Config::parse(
        &format!("{MINIMAL}\n[recipients]\nsources = [\"callout\", \"ldap\"]\n[recipients.ldap]\nurl = \"ldap://127.0.0.1:3389\"\nbase = \"dc=example,dc=org\"\n"),
        "t.toml",
    )
    .unwrap();
    assert_eq!(
        c.recipients.sources,
        [RecipientSource::Callout, RecipientSource::Ldap]
    );
    let ldap = c.recipients.ldap.unwrap();
    assert_eq!(ldap.filter, DEFAULT_LDAP_FILTER);
    assert_eq!(ldap.timeout, HumanDuration::from_secs(10));
    assert_eq!(
        c.recipients.callout.positive_ttl,
        HumanDuration::from_secs(7 * 86_400)
    );
}

#[test]
fn example_parses_and_states_the_true_defaults() {
    let c = Config::parse(example(), "example.toml").unwrap();
    assert_eq!(c.server, ServerSection::default());
    assert_eq!(c.limits, Limits::default());
    assert_eq!(c.delivery, DeliverySection::default());
    assert_eq!(c.spool, SpoolSection::default());
    assert_eq!(c.log, LogSection::default());
    assert_eq!(c.dns, DnsSection::default());
    assert_eq!(c.header_firewall, HeaderFirewallSection::default());
    assert_eq!(c.outbound, Outbound::default());
    assert_eq!(c.auth, AuthSection::default());
    assert_eq!(c.recipients, RecipientsSection::default());
    assert_eq!(c.checks, ChecksSection::default());
    assert_eq!(c.monitor, MonitorSection::default());
    assert_eq!(c.alerts, AlertsSection::default());
    assert_eq!(c.inbound.backend_tls, Inbound::default().backend_tls);
    assert_eq!(
        c.inbound.received_client,
        Inbound::default().received_client
    );
    assert_eq!(c.listen[0].tls, Some(c.listen[0].kind.default_tls()));
    assert_eq!(c.listen[0].max_connections, default_max_connections());
}

#[test]
fn example_mentions_every_key() {
    // Every key of every section appears in the example, commented out or not.
    let text = example();
    for key in [
        "hostname",
        "user",
        "group",
        "pid_file",
        "addresses",
        "blocklists",
        "interval",
        "webhook",
        "webhook_token_file",
        "webhook_ca_file",
        "max_per_hour",
        "name",
        "address",
        "kind",
        "tls",
        "max_connections",
        "certificate",
        "private_key",
        "domains",
        "backend",
        "backend_tls",
        "backend_ca_file",
        "received_client",
        "trusted_networks",
        "smart_host",
        "smart_host_tls",
        "dane",
        "mta_sts",
        "extra_ca_file",
        "mta_sts_port",
        "smtp_port",
        "message_size",
        "recipients",
        "soft_errors",
        "hard_errors",
        "command_timeout",
        "data_timeout",
        "min_data_rate",
        "session_timeout",
        "greet_wait",
        "cache_ttl",
        "exempt",
        "allow_file",
        "block_file",
        "sites",
        "threshold",
        "no_ptr",
        "ptr_not_confirmed",
        "helo_our_name",
        "helo_our_address",
        "helo_not_fqdn",
        "helo_literal_mismatch",
        "line_length",
        "auth_failures",
        "users_file",
        "max_parallel_checks",
        "sender_map",
        "url",
        "starttls",
        "bind_dn_template",
        "search_base",
        "search_filter",
        "search_bind_dn",
        "search_bind_password_file",
        "ca_file",
        "allow_plaintext",
        "timeout",
        "header_size",
        "header_fields",
        "path",
        "concurrency",
        "connect_timeout",
        "idle_timeout",
        "retry_initial",
        "retry_max",
        "max_lifetime",
        "scan_interval",
        "format",
        "level",
        "nameservers",
        "enabled",
        "outbound_remove",
        "inbound_remove",
        "remove_mailer",
        "received",
        "internal_domains",
        "internal_hosts",
        "internal_networks",
        "domain",
        "selector",
        "key_file",
        "sources",
        "file",
        "exact_local_part",
        "harvest_threshold",
        "harvest_delay",
        "base",
        "filter",
        "bind_dn",
        "bind_password_file",
        "positive_ttl",
        "negative_ttl",
        "authserv_id",
        "enforce_dmarc",
        "deadline",
        "max_verify_size",
        "trusted_forwarders",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start_matches("# ").starts_with(&format!("{key} = "))),
            "{key} is not in the example"
        );
    }
}

#[test]
fn unknown_key_suggests_the_closest() {
    let text = r#"hostname = "mx1.example.org"
[[listen]]
name = "mx"
address = "127.0.0.1:2525"
kind = "inbound"
[inbound]
domain = ["example.org"]
"#;
    let err = Config::parse(text, "ravelin.toml").unwrap_err();
    assert_eq!(err.0.len(), 1);
    assert_eq!(
        err.to_string(),
        "ravelin.toml:7: unknown key \"domain\" in [inbound] — fix: did you mean \"domains\"? \
         valid keys: domains, backend, backend_tls, backend_ca_file, received_client"
    );
}

#[test]
fn unknown_keys_everywhere() {
    let list = errors("hostnam = \"mx1.example.org\"\n");
    assert_eq!(list.len(), 2, "{list:#?}");
    let (line, message, fix) = &list[0];
    assert_eq!(*line, 1);
    assert_eq!(message, "unknown key \"hostnam\" at the top level");
    assert!(fix.starts_with("did you mean \"hostname\"?"), "{fix}");
    // With the misspelt key set aside, the real one is missing too.
    assert_eq!(
        list[1].1,
        "required key \"hostname\" is missing at the top level"
    );

    // The listener also lacks its address, reported once the unknown key is set aside.
    let list = errors(&format!("{MINIMAL}\n[[listen]]\nname = \"b\"\nport = 25\n"));
    assert_eq!(list.len(), 2, "{list:#?}");
    assert_eq!(
        list[0].1,
        "required key \"address\" is missing in [[listen]]"
    );
    let (line, message, fix) = &list[1];
    assert_eq!(*line, 15);
    assert_eq!(message, "unknown key \"port\" in [[listen]]");
    assert!(
        fix.starts_with("remove it or correct it; valid keys: name, address"),
        "{fix}"
    );

    let (line, message, _) = error(&format!("{MINIMAL}\n[limits]\n\nmessage_sise = 5\n"));
    assert_eq!(line, 15);
    assert_eq!(message, "unknown key \"message_sise\" in [limits]");

    let (line, message, _) = error(&format!("{MINIMAL}\n[queue]\n"));
    assert_eq!(line, 13);
    assert_eq!(message, "unknown key \"queue\" at the top level");
}

#[test]
fn unknown_value_suggests_the_closest() {
    let text = MINIMAL.replace("kind = \"inbound\"", "kind = \"inbund\"");
    let (line, message, fix) = error(&text);
    assert_eq!(line, 7);
    assert_eq!(message, "listen[0].kind: unknown value \"inbund\"");
    assert_eq!(
        fix,
        "did you mean \"inbound\"? valid values: inbound, submission, submissions, relay"
    );
}

#[test]
fn bad_values_name_their_line() {
    let (line, message, fix) = error(&format!(
        "{MINIMAL}\n[limits]\ndata_timeout = \"5 minutes\"\n"
    ));
    assert_eq!(line, 14);
    assert!(
        message.starts_with("limits.data_timeout: invalid duration \"5 minutes\""),
        "{message}"
    );
    assert!(fix.contains("\"30s\""), "{fix}");

    let (line, message, fix) = error(&format!("{MINIMAL}\n[limits]\ncommand_timeout = 120\n"));
    assert_eq!(line, 14);
    assert!(
        message.starts_with("limits.command_timeout: invalid type: integer `120`"),
        "{message}"
    );
    assert!(fix.contains("\"30s\""), "{fix}");

    let text = format!(
        "{MINIMAL}\n[outbound]\ntrusted_networks = [\n  \"10.0.0.0/8\",\n  \"10.0.0.25/24\",\n]\n"
    );
    let (line, message, fix) = error(&text);
    assert_eq!(line, 16);
    assert!(
        message.starts_with("outbound.trusted_networks[1]: invalid network"),
        "{message}"
    );
    assert!(fix.contains("\"10.0.0.0/24\""), "{fix}");

    let text = MINIMAL.replace("smtp://127.0.0.1:10025", "lmtp://127.0.0.1:24");
    let (line, message, _) = error(&text);
    assert_eq!(line, 11);
    assert!(
        message.contains("scheme \"lmtp\" is not supported"),
        "{message}"
    );

    let text = MINIMAL.replace("127.0.0.1:2525", "127.0.0.1");
    let (line, message, _) = error(&text);
    assert_eq!(line, 6);
    assert!(message.starts_with("listen[0].address: "), "{message}");

    let (line, message, _) = error(&format!("{MINIMAL}\n[limits]\nrecipients = -1\n"));
    assert_eq!(line, 14);
    assert!(
        message.starts_with("limits.recipients: invalid value"),
        "{message}"
    );
}

#[test]
fn missing_required_keys() {
    let (line, message, fix) = error("\n[spool]\npath = \"spool\"\n");
    assert_eq!(line, 1);
    assert_eq!(
        message,
        "required key \"hostname\" is missing at the top level"
    );
    assert_eq!(fix, "add hostname = ... (see the example configuration)");

    let (line, message, fix) = error(&format!(
        "{MINIMAL}\n\n[[listen]]\nname = \"b\"\nkind = \"relay\"\n"
    ));
    assert_eq!(line, 14);
    assert_eq!(message, "required key \"address\" is missing in [[listen]]");
    assert!(fix.starts_with("add listen[1].address"), "{fix}");

    let (line, message, _) = error(&format!("{MINIMAL}\n[tls]\ncertificate = \"c.pem\"\n"));
    assert_eq!(line, 13);
    assert_eq!(message, "required key \"private_key\" is missing in [tls]");
}

#[test]
fn syntax_errors_and_duplicates() {
    let (line, message, _) = error(&format!("{MINIMAL}\n[limits\nrecipients = 5\n"));
    assert_eq!(line, 13);
    assert!(message.starts_with("TOML syntax error: "), "{message}");

    let (line, message, _) = error(&format!(
        "{MINIMAL}\n[limits]\nrecipients = 5\nrecipients = 6\n"
    ));
    assert_eq!(line, 15);
    assert_eq!(message, "this key is set twice");
}

#[test]
fn tls_listeners_need_a_certificate() {
    // Explicit tls = "require": the error is on the tls line.
    let text = MINIMAL.replace(
        "kind = \"inbound\"",
        "kind = \"inbound\"\ntls = \"require\"",
    );
    let (line, message, fix) = error(&text);
    assert_eq!(line, 8);
    assert_eq!(
        message,
        "listener \"mx\" has tls = \"require\" but there is no [tls] section"
    );
    assert!(fix.starts_with("add [tls] with certificate"), "{fix}");

    // TLS by default of the kind: the error is on the kind line.
    let text = format!(
        "{MINIMAL}\n[[listen]]\nname = \"sub\"\naddress = \"127.0.0.1:2587\"\nkind = \"submission\"\n\n[[listen]]\nname = \"smtps\"\nkind = \"submissions\"\naddress = \"127.0.0.1:2465\"\n\n[auth]\nusers_file = \"users\"\n"
    );
    let list = errors(&text);
    assert_eq!(list.len(), 2, "{list:#?}");
    assert_eq!(list[0].0, 16);
    assert_eq!(
        list[0].1,
        "listener \"sub\" has kind = \"submission\" (tls = \"require\" by default) but there is no [tls] section"
    );
    assert_eq!(list[1].0, 20);
    assert!(
        list[1].1.contains("tls = \"implicit\" by default"),
        "{}",
        list[1].1
    );

    // Offer without [tls] is fine (self-signed), and so is require with [tls].
    let text = format!(
        "{}\n[tls]\ncertificate = \"c.pem\"\nprivate_key = \"k.pem\"\n",
        MINIMAL.replace(
            "kind = \"inbound\"",
            "kind = \"inbound\"\ntls = \"implicit\""
        )
    );
    assert!(Config::parse(&text, "t").is_ok());
}

#[test]
fn listener_kinds_need_their_sections() {
    // An inbound listener without domains or backend: both reported, on the kind line.
    let text = "hostname = \"mx1.example.org\"\n[[listen]]\nname = \"mx\"\naddress = \"127.0.0.1:25\"\nkind = \"inbound\"\n";
    let list = errors(text);
    assert_eq!(list.len(), 2, "{list:#?}");
    assert_eq!(list[0].0, 5);
    assert_eq!(
        list[0].1,
        "listener \"mx\" is kind = \"inbound\" but inbound.domains is empty"
    );
    assert_eq!(
        list[0].2,
        "add domains = [\"example.org\"] to the [inbound] section"
    );
    assert_eq!(list[1].0, 5);
    assert!(list[1].1.ends_with("inbound.backend is empty"));

    // An empty array written in the file: the error is on that line.
    let text = MINIMAL.replace("backend = [\"smtp://127.0.0.1:10025\"]", "backend = []");
    let (line, message, _) = error(&text);
    assert_eq!(line, 11);
    assert!(message.ends_with("inbound.backend is empty"));

    // A relay listener without trusted networks.
    let text = format!(
        "{MINIMAL}\n[[listen]]\nname = \"relay\"\naddress = \"127.0.0.1:10026\"\nkind = \"relay\"\n"
    );
    let (line, message, fix) = error(&text);
    assert_eq!(line, 16);
    assert!(
        message.contains("outbound.trusted_networks is empty"),
        "{message}"
    );
    assert!(fix.contains("trusted_networks = ["), "{fix}");
}

#[test]
fn all_semantic_errors_are_collected_in_line_order() {
    let text = r#"hostname = "localhost"

[server]
user = "root"

[[listen]]
name = "mx"
address = "127.0.0.1:2525"
kind = "inbound"

[[listen]]
name = "mx"
address = "127.0.0.1:2525"
kind = "relay"
tls = "off"
max_connections = 0

[inbound]
domains = ["example.org", "not a domain"]
backend = ["smtp://127.0.0.1:10025"]

[outbound]
trusted_networks = ["127.0.0.1"]

[limits]
line_length = 512
soft_errors = 5
hard_errors = 4
session_timeout = "0s"

[delivery]
concurrency = 0
retry_initial = "2h"
retry_max = "1h"

[log]
level = "verbose"

[spool]
path = ""
"#;
    let list = errors(text);
    let lines: Vec<usize> = list.iter().map(|e| e.0).collect();
    assert_eq!(
        lines,
        [1, 4, 12, 13, 16, 19, 26, 28, 29, 32, 34, 37, 40],
        "{list:#?}"
    );
    assert!(
        list[0]
            .1
            .contains("\"localhost\" is not a fully qualified domain name")
    );
    assert!(list[1].1.contains("root"));
    assert!(list[2].1.contains("\"mx\" is used twice"));
    assert!(
        list[3]
            .1
            .contains("127.0.0.1:2525 is used by an earlier listener")
    );
    assert!(list[4].1.contains("max_connections is 0"));
    assert!(list[5].1.contains("\"not a domain\" is not a domain name"));
    assert!(list[6].1.contains("line_length = 512"));
    assert!(
        list[7]
            .1
            .contains("hard_errors = 4 is below soft_errors = 5")
    );
    assert!(list[8].1.contains("session_timeout is 0s"));
    assert!(list[9].1.contains("concurrency is 0"));
    assert!(
        list[10]
            .1
            .contains("retry_max = \"1h\" is shorter than retry_initial = \"2h\"")
    );
    assert!(list[11].1.contains("log.level \"verbose\""));
    assert!(list[12].1.contains("spool.path is empty"));
    // Every error prints as FILE:LINE: message — fix: ...
    let err = Config::parse(text, "ravelin.toml").unwrap_err();
    let printed = err.to_string();
    assert_eq!(printed.lines().count(), 13);
    assert!(
        printed
            .lines()
            .all(|l| l.starts_with("ravelin.toml:") && l.contains(" — fix: "))
    );
}

#[test]
fn every_reader_error_is_reported_in_line_order() {
    let text = r#"hostname = "mx1.example.org"

[server]
usr = "nobody"

[[listen]]
name = "mx"
address = "127.0.0.1:2525"
kind = "inbound"
tls = "sometimes"

[inbound]
domains = ["example.org"]
backend = ["smtp://127.0.0.1:10025"]
received_client = "yes"

[queue]
path = "/var/spool"
max = 5

[delivery]
retry_max = "5 parsecs"
retry_initial = 30
"#;
    let list = errors(text);
    let lines: Vec<usize> = list.iter().map(|e| e.0).collect();
    assert_eq!(lines, [4, 10, 15, 17, 22, 23], "{list:#?}");
    assert_eq!(list[0].1, "unknown key \"usr\" in [server]");
    assert_eq!(list[1].1, "listen[0].tls: unknown value \"sometimes\"");
    assert!(
        list[2].1.starts_with("inbound.received_client: "),
        "{list:#?}"
    );
    assert_eq!(list[3].1, "unknown key \"queue\" at the top level");
    assert!(
        list[4]
            .1
            .starts_with("delivery.retry_max: invalid duration \"5 parsecs\""),
        "{list:#?}"
    );
    assert!(
        list[5].1.starts_with("delivery.retry_initial: "),
        "{list:#?}"
    );

    // A required key set aside for its bad value is not also reported missing; one that is
    // really missing is.
    let list = errors(&MINIMAL.replace("name = \"mx\"", "name = 5"));
    assert_eq!(list.len(), 1, "{list:#?}");
    assert!(
        list[0].1.starts_with("listen[0].name: invalid type"),
        "{list:#?}"
    );
    let list = errors(&format!(
        "{MINIMAL}\n[log]\nformat = \"xml\"\n\n[tls]\ncertificate = \"c.pem\"\n"
    ));
    let lines: Vec<usize> = list.iter().map(|e| e.0).collect();
    assert_eq!(lines, [14, 16], "{list:#?}");
    assert_eq!(
        list[1].1,
        "required key \"private_key\" is missing in [tls]"
    );

    // Semantic checks wait until the file reads cleanly (defaults standing in for entries set
    // aside would make them wrong).
    let list = errors(&MINIMAL.replace(
        "hostname = \"mx1.example.org\"",
        "hostname = \"localhost\"\ncolour = \"blue\"",
    ));
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0].1, "unknown key \"colour\" at the top level");
}

#[test]
fn no_listener_is_an_error() {
    let (line, message, fix) = error("hostname = \"mx1.example.org\"\n");
    assert_eq!(line, 1);
    assert!(message.starts_with("no [[listen]] section"));
    assert!(fix.contains("kind = \"inbound\""));
}

#[test]
fn load_resolves_relative_paths_and_checks_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cert.pem"), "x").unwrap();
    let text = format!(
        "{MINIMAL}\n[tls]\ncertificate = \"cert.pem\"\nprivate_key = \"key.pem\"\n\n[spool]\npath = \"spool\"\n"
    );
    let file = dir.path().join("ravelin.toml");
    std::fs::write(&file, &text).unwrap();
    let err = Config::load(&file).unwrap_err();
    assert_eq!(err.0.len(), 1, "{err}");
    assert_eq!(err.0[0].line, 15);
    assert_eq!(err.0[0].file, file.display().to_string());
    assert!(err.0[0].message.starts_with("tls.private_key: "), "{err}");
    assert!(err.0[0].message.contains("key.pem cannot be read"), "{err}");

    std::fs::write(dir.path().join("key.pem"), "x").unwrap();
    let c = Config::load(&file).unwrap();
    assert_eq!(c.source.as_deref(), Some(file.as_path()));
    assert_eq!(c.spool.path, dir.path().join("spool"));
    assert_eq!(c.tls.unwrap().certificate, dir.path().join("cert.pem"));

    // The recipient file and the LDAP password file, relative to the configuration.
    let text = format!(
        "{MINIMAL}\n[recipients]\nsources = [\"file\", \"ldap\"]\nfile = \"recipients\"\n[recipients.ldap]\nurl = \"ldap://127.0.0.1:3389\"\nbase = \"dc=x\"\nbind_dn = \"cn=svc\"\nbind_password_file = \"pw\"\n"
    );
    std::fs::write(&file, &text).unwrap();
    let err = Config::load(&file).unwrap_err();
    assert_eq!(err.0.len(), 2, "{err}");
    assert_eq!((err.0[0].line, err.0[1].line), (15, 20), "{err}");
    assert!(err.0[0].message.starts_with("recipients.file: "), "{err}");
    assert!(
        err.0[1]
            .message
            .starts_with("recipients.ldap.bind_password_file: "),
        "{err}"
    );
    std::fs::write(dir.path().join("recipients"), "a@example.org\n").unwrap();
    std::fs::write(dir.path().join("pw"), "x\n").unwrap();
    let c = Config::load(&file).unwrap();
    assert_eq!(c.recipients.file, Some(dir.path().join("recipients")));

    // Unreadable: line 0, printed without a line number.
    let missing = dir.path().join("missing.toml");
    let err = Config::load(&missing).unwrap_err();
    assert_eq!(err.0[0].line, 0);
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read", missing.display()))
    );

    // Too large, and not UTF-8.
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; MAX_CONFIG_BYTES as usize + 1]).unwrap();
    assert!(
        Config::load(&big)
            .unwrap_err()
            .to_string()
            .contains("larger than")
    );
    let latin1 = dir.path().join("latin1.toml");
    std::fs::write(&latin1, b"hostname = \"caf\xe9.example.org\"\n").unwrap();
    assert!(
        Config::load(&latin1)
            .unwrap_err()
            .to_string()
            .contains("not UTF-8")
    );
}

#[test]
fn example_states_the_state_ban_and_limit_defaults() {
    let c = Config::parse(example(), "example.toml").unwrap();
    assert_eq!(c.state, StateSection::default());
    assert_eq!(c.rate_limits, RateLimitsSection::default());
    assert_eq!(c.greylist, GreylistSection::default());
    assert_eq!(c.screen, ScreenSection::default());
    assert_eq!(c.dnsbl, DnsblSection::default());
    let d = BansSection::default();
    for kind in AbuseKind::ALL {
        assert_eq!(c.bans.rule(kind), d.rule(kind), "{kind}");
        assert_eq!(c.bans.rule(kind), kind.defaults(), "{kind}");
    }
    assert_eq!(
        (c.bans.enabled, &c.bans.exempt, c.bans.ipv6_prefix),
        (d.enabled, &d.exempt, d.ipv6_prefix)
    );
    assert_eq!(
        [
            c.bans.max_duration,
            c.bans.remember,
            c.bans.max_delay,
            c.bans.manual_duration
        ],
        [d.max_duration, d.remember, d.max_delay, d.manual_duration]
    );
}

#[test]
fn state_sections_are_checked() {
    let base = MINIMAL.to_string();
    let (line, message, _) = error(&format!("{base}\n[bans]\nipv6_prefix = 62\n"));
    assert!(message.contains("ipv6_prefix = 62"), "{message}");
    assert_eq!(line, base.lines().count() + 3);
    let (_, message, _) = error(&format!(
        "{base}\n[bans.auth_failures]\nthreshold = 3\nduration = \"0s\"\n"
    ));
    assert!(message.contains("bans.auth_failures.duration"), "{message}");
    let (_, message, _) = error(&format!(
        "{base}\n[greylist]\ndelay = \"1h\"\nretry_window = \"30m\"\n"
    ));
    assert!(message.contains("retry_window"), "{message}");
    let (_, message, _) = error(&format!("{base}\n[rate_limits]\nipv4_prefix = 33\n"));
    assert!(message.contains("ipv4_prefix = 33"), "{message}");
    let (_, message, fix) = error(&format!(
        "{base}\n[state]\nstore = \"memcached://:hunter2@cache\"\n"
    ));
    assert!(
        !message.contains("hunter2") && fix.contains("redis://"),
        "{message}"
    );
    let c = Config::parse(
        &format!("{base}\n[state]\nstore = \"redis://127.0.0.1:6379/3\"\n[bans.pregreet]\nthreshold = 1\n"),
        "t",
    )
    .unwrap();
    assert!(matches!(c.state.store, StoreUrl::Redis(_)));
    let rule = c.bans.rule(AbuseKind::Pregreet);
    assert_eq!(
        (rule.threshold, rule.window),
        (1, AbuseKind::Pregreet.defaults().window)
    );
}

#[test]
fn header_firewall_settings_are_checked() {
    let text = format!(
        "{MINIMAL}\n[header_firewall]\nreceived = \"all\"\ninternal_domains = [\"Corp.Example.ORG\"]\ninternal_hosts = [\"EXCH01\"]\ninternal_networks = [\"198.51.100.0/28\"]\noutbound_remove = [\"X-Secret-*\"]\n"
    );
    let c = Config::parse(&text, "ravelin.toml").unwrap();
    let hf = &c.header_firewall;
    assert!(hf.enabled);
    assert_eq!(hf.received, ReceivedMode::All);
    assert_eq!(hf.internal_domains, ["corp.example.org"]);
    assert_eq!(hf.internal_hosts, ["exch01"]);
    assert_eq!(hf.outbound_remove, ["X-Secret-*"]);
    assert_eq!(
        hf.inbound_remove,
        HeaderFirewallSection::default().inbound_remove
    );

    let text = format!(
        "{MINIMAL}\n[header_firewall]\noutbound_remove = [\"X-Ok\", \"*\", \"Bad Name\"]\ninbound_remove = [\"X-*-Middle\"]\ninternal_domains = [\"corp..example\"]\ninternal_hosts = [\"MX1.example.org\"]\n"
    );
    let list = errors(&text);
    let lines: Vec<usize> = list.iter().map(|e| e.0).collect();
    assert_eq!(lines, [14, 14, 15, 16, 17], "{list:#?}");
    assert!(
        list[0].1.contains("\"*\" is not a header field name"),
        "{list:#?}"
    );
    assert!(list[1].1.contains("\"Bad Name\""), "{list:#?}");
    assert!(list[2].1.contains("X-*-Middle"), "{list:#?}");
    assert!(list[3].1.contains("corp..example"), "{list:#?}");
    assert!(list[4].1.contains("own hostname"), "{list:#?}");

    let (line, message, _) = error(&format!("{MINIMAL}\n[limits]\nheader_size = 10\n"));
    assert_eq!(line, 14);
    assert!(message.contains("header_size"), "{message}");
}

#[test]
fn dkim_keys_are_checked() {
    let keys = |entries: &str| format!("{MINIMAL}{entries}");
    let c = Config::parse(
        &keys("\n[[dkim.keys]]\ndomain = \"Example.ORG\"\nselector = \"rsa2026\"\nkey_file = \"k.pem\"\n"),
        "ravelin.toml",
    )
    .unwrap();
    assert_eq!(c.dkim.keys[0].domain, "example.org");
    assert_eq!(c.dkim.keys[0].key_file, PathBuf::from("k.pem"));

    let list = errors(&keys(
        "\n[[dkim.keys]]\ndomain = \"example\"\nselector = \"a_b\"\nkey_file = \"\"\n\
         \n[[dkim.keys]]\ndomain = \"example.org\"\nselector = \"s\"\nkey_file = \"a.pem\"\n\
         \n[[dkim.keys]]\ndomain = \"example.org\"\nselector = \"S\"\nkey_file = \"b.pem\"\n",
    ));
    let lines: Vec<usize> = list.iter().map(|e| e.0).collect();
    assert_eq!(lines, [14, 15, 16, 25], "{list:#?}");
    assert!(list[3].1.contains("listed twice"), "{list:#?}");

    // load: the key file must hold a usable key.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ravelin.toml");
    std::fs::write(
        dir.path().join("small.pem"),
        include_str!("../../tests/fixtures/dkim/rsa1024-too-small.pem"),
    )
    .unwrap();
    std::fs::write(
        &config,
        keys("\n[[dkim.keys]]\ndomain = \"example.org\"\nselector = \"s\"\nkey_file = \"small.pem\"\n"),
    )
    .unwrap();
    let ConfigErrors(list) = Config::load(&config).unwrap_err();
    assert_eq!(list.len(), 1, "{list:#?}");
    assert_eq!(list[0].line, 16);
    assert!(
        list[0].message.contains("fewer than 2048 bits"),
        "{}",
        list[0].message
    );
}

#[test]
fn dns_section_reads_timeout_attempts_and_ad_trust() {
    let text = format!(
        "{MINIMAL}\n[dns]\nnameservers = [\"127.0.0.1:5353\"]\ntimeout = \"2s\"\nattempts = 3\nad_trust = \"never\"\n"
    );
    let s = Config::parse(&text, "ravelin.toml")
        .unwrap()
        .dns
        .resolver_settings();
    assert_eq!(s.timeout, std::time::Duration::from_secs(2));
    assert_eq!(s.attempts, 3);
    assert_eq!(s.ad_trust, ravelin_dns::AdTrust::Never);
    let (_, message, _) = error(&format!("{MINIMAL}\n[dns]\nad_trust = \"sometimes\"\n"));
    assert!(message.contains("ad_trust"), "{message}");
    let text = format!("{MINIMAL}\n[dns]\nattempts = 0\n");
    let (line, message, fix) = error(&text);
    assert!(message.contains("dns.attempts"), "{message}");
    assert!(fix.contains("1 to 10"), "{fix}");
    let want = text
        .lines()
        .position(|l| l.starts_with("attempts"))
        .unwrap()
        + 1;
    assert_eq!(line, want);
}

#[test]
fn screen_and_dnsbl_sections_are_read_and_checked() {
    let base = MINIMAL.to_string();
    let c = Config::parse(
        &format!(
            "{base}\n[screen]\ngreet_wait = \"2s\"\nexempt = []\ncache_ttl = \"2h\"\n\n[dnsbl]\nsites = [\"zen.spamhaus.org=127.0.0.[2..11]*3\", \"list.dnswl.org=127.0.[0..255].[1..3]*-4\"]\nthreshold = 4\nno_ptr = 0\nptr_not_confirmed = 0\n"
        ),
        "t",
    )
    .unwrap();
    assert_eq!(c.screen.greet_wait.get(), Duration::from_secs(2));
    assert!(c.screen.exempt.is_empty());
    assert_eq!(c.screen.cache_ttl.get(), Duration::from_secs(7200));
    assert_eq!(c.dnsbl.sites.len(), 2);
    assert_eq!(c.dnsbl.sites[1].weight, -4);
    assert_eq!(c.dnsbl.threshold, 4);
    assert!(!c.dnsbl.checks_ptr());
    assert_eq!(
        ScreenSection::default().greet_wait.get(),
        Duration::from_secs(6)
    );
    assert_eq!(DnsblSection::default().sites, Vec::new());

    let (line, message, fix) = error(&format!(
        "{base}\n[dnsbl]\nsites = [\n  \"zen.example=127.0.0.[9..2]*3\",\n]\n"
    ));
    assert_eq!(line, base.lines().count() + 4);
    assert!(message.contains("9..2"), "{message}");
    assert!(fix.contains("zone[=filter][*weight]"), "{fix}");
    let (line, message, _) = error(&format!("{base}\n[screen]\ngreet_wait = \"2m\"\n"));
    assert_eq!(line, base.lines().count() + 3);
    assert!(message.contains("greet_wait"), "{message}");
    let (_, message, _) = error(&format!("{base}\n[dnsbl]\nthreshold = 0\n"));
    assert!(message.contains("threshold"), "{message}");
    let (_, message, _) = error(&format!("{base}\n[dnsbl]\ntimeout = \"0s\"\n"));
    assert!(message.contains("dnsbl.timeout"), "{message}");
    let (_, message, _) = error(&format!("{base}\n[screen]\ngreet_pause = \"1s\"\n"));
    assert!(message.contains("greet_pause"), "{message}");
}

#[test]
fn screen_files_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("allow.cidr"), "# ok\n192.0.2.0/24\n").unwrap();
    std::fs::write(
        dir.path().join("block.cidr"),
        "198.51.100.0/24\n198.51.100.1/24\n",
    )
    .unwrap();
    let path = dir.path().join("ravelin.toml");
    std::fs::write(
        &path,
        format!("{MINIMAL}\n[screen]\nallow_file = \"allow.cidr\"\nblock_file = \"block.cidr\"\n"),
    )
    .unwrap();
    let errors = Config::load(&path).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].message.contains("block.cidr line 2"),
        "{:?}",
        errors[0]
    );
    assert_eq!(errors[0].line, MINIMAL.lines().count() + 4);
    std::fs::write(dir.path().join("block.cidr"), "198.51.100.0/24\n").unwrap();
    let c = Config::load(&path).unwrap();
    assert_eq!(
        c.screen.allow_file.as_deref(),
        Some(dir.path().join("allow.cidr").as_path())
    );
}

#[test]
fn metrics_off_by_default_and_a_token_away_from_loopback() {
    let c = Config::parse(MINIMAL, "ravelin.toml").unwrap();
    assert_eq!(c.metrics.listen, None);
    let text = format!("{MINIMAL}\n[metrics]\nlisten = \"127.0.0.1:9325\"\n");
    let c = Config::parse(&text, "ravelin.toml").unwrap();
    assert_eq!(c.metrics.listen, Some("127.0.0.1:9325".parse().unwrap()));
    let text = format!("{MINIMAL}\n[metrics]\nlisten = \"0.0.0.0:9325\"\n");
    let (line, message, fix) = error(&text);
    assert!(message.contains("token_file"), "{message}");
    assert!(fix.contains("127.0.0.1"), "{fix}");
    let want = text.lines().position(|l| l.starts_with("listen")).unwrap() + 1;
    assert_eq!(line, want);
    let text = format!("{MINIMAL}\n[metrics]\nlisten = \"[::]:9325\"\ntoken_file = \"t\"\n");
    assert!(Config::parse(&text, "ravelin.toml").is_ok());
}

#[test]
fn monitor_off_by_default_and_checked() {
    let c = Config::parse(MINIMAL, "ravelin.toml").unwrap();
    assert!(
        c.monitor.addresses.is_empty(),
        "nothing is looked up unless asked"
    );
    assert!(c.monitor.blocklists.iter().any(|z| z == "zen.spamhaus.org"));
    let text = format!(
        "{MINIMAL}\n[monitor]\naddresses = [\"192.0.2.25\", \"2001:db8::25\"]\ninterval = \"12h\"\n"
    );
    let c = Config::parse(&text, "ravelin.toml").unwrap();
    assert_eq!(c.monitor.addresses.len(), 2);
    assert_eq!(c.monitor.interval.0, Duration::from_secs(12 * 3600));
    for (setting, said, fix) in [
        ("interval = \"10s\"", "under a minute", "24h"),
        (
            "blocklists = [\"dnsbl.sorbs.net\"]",
            "has shut down",
            "retired list",
        ),
        (
            "blocklists = [\"bl.spamcop.net\", \"BL.spamcop.net.\"]",
            "twice",
            "once",
        ),
        ("blocklists = []", "empty", "default lists"),
        (
            "blocklists = [\"zen spamhaus org\"]",
            "not a DNS zone",
            "zen.spamhaus.org",
        ),
        ("blocklists = [\"localhost\"]", "not a DNS zone", "zone"),
    ] {
        // (the lists are on one line here, so the entry's line is the key's)
        let text = format!("{MINIMAL}\n[monitor]\naddresses = [\"192.0.2.25\"]\n{setting}\n");
        let (line, message, hint) = error(&text);
        assert!(message.contains(said), "{setting}: {message}");
        assert!(hint.contains(fix), "{setting}: {hint}");
        let key = setting.split(' ').next().unwrap();
        let want = text.lines().position(|l| l.starts_with(key)).unwrap() + 1;
        assert_eq!(line, want, "{setting}");
    }
}

#[test]
fn monitor_errors_name_the_entry_and_ipv6_needs_a_list_that_has_it() {
    let text = format!(
        "{MINIMAL}\n[monitor]\naddresses = [\"192.0.2.25\"]\nblocklists = [\n  \"zen.spamhaus.org\",\n  \"dnsbl.sorbs.net\",\n]\n"
    );
    let (line, message, _) = error(&text);
    assert!(message.contains("dnsbl.sorbs.net"), "{message}");
    assert_eq!(
        line,
        text.lines().position(|l| l.contains("sorbs")).unwrap() + 1
    );
    let text = format!(
        "{MINIMAL}\n[monitor]\naddresses = [\"2001:db8::25\"]\nblocklists = [\"bl.spamcop.net\"]\n"
    );
    let (line, message, fix) = error(&text);
    assert!(message.contains("IPv4 addresses only"), "{message}");
    assert!(fix.contains("zen.spamhaus.org"), "{fix}");
    assert_eq!(
        line,
        text.lines()
            .position(|l| l.starts_with("addresses"))
            .unwrap()
            + 1
    );
}

#[test]
fn alerts_off_by_default_and_never_plain_http_across_the_network() {
    let c = Config::parse(MINIMAL, "ravelin.toml").unwrap();
    assert_eq!(c.alerts.webhook, None);
    let ok = format!("{MINIMAL}\n[alerts]\nwebhook = \"http://127.0.0.1:8080/hook\"\n");
    assert!(Config::parse(&ok, "ravelin.toml").is_ok());
    let text = format!("{MINIMAL}\n[alerts]\nwebhook = \"http://hooks.example.org/h\"\n");
    let (line, message, fix) = error(&text);
    assert!(message.contains("unencrypted"), "{message}");
    assert!(fix.contains("https://"), "{fix}");
    assert_eq!(
        line,
        text.lines().position(|l| l.starts_with("webhook")).unwrap() + 1
    );
}

#[test]
fn direct_delivery_ports_must_not_be_zero() {
    let text = format!("{MINIMAL}\n[outbound]\nmta_sts_port = 0\n\n[delivery]\nsmtp_port = 0\n");
    let list = errors(&text);
    assert_eq!(list.len(), 2, "{list:#?}");
    assert!(
        list.iter().any(|e| e.1.contains("delivery.smtp_port is 0")),
        "{list:#?}"
    );
    assert!(
        list.iter()
            .any(|e| e.1.contains("outbound.mta_sts_port is 0")),
        "{list:#?}"
    );
}

#[test]
fn checks_section_is_read_and_checked() {
    let c = Config::parse(MINIMAL, "t").unwrap();
    assert!(c.checks.enabled && c.checks.enforce_dmarc);
    assert_eq!(c.checks.authserv_id(&c.hostname), c.hostname);
    let c = Config::parse(
        &format!(
            "{MINIMAL}\n[checks]\nauthserv_id = \"auth.example.org\"\nenforce_dmarc = false\ndeadline = \"3s\"\ntrusted_forwarders = [\"192.0.2.0/24\", \"2001:db8::1\", \"Lists.Example.NET.\"]\n"
        ),
        "t",
    )
    .unwrap();
    assert_eq!(c.checks.authserv_id("ignored"), "auth.example.org");
    assert!(!c.checks.enforce_dmarc);
    assert_eq!(c.checks.deadline, HumanDuration::from_secs(3));
    assert_eq!(
        c.checks.trusted_forwarders,
        [
            Forwarder::Network("192.0.2.0/24".parse().unwrap()),
            Forwarder::Network("2001:db8::1".parse().unwrap()),
            Forwarder::Domain("lists.example.net".into()),
        ]
    );
    let base = MINIMAL.to_string();
    let (line, message, fix) = error(&format!("{base}\n[checks]\ndeadline = \"0s\"\n"));
    assert_eq!(line, base.lines().count() + 3);
    assert!(message.contains("checks.deadline"), "{message}");
    assert!(fix.contains("positive"), "{fix}");
    let (_, message, _) = error(&format!("{base}\n[checks]\nmax_verify_size = 100\n"));
    assert!(message.contains("max_verify_size = 100"), "{message}");
    let (_, message, _) = error(&format!("{base}\n[checks]\nauthserv_id = \"not a host\"\n"));
    assert!(message.contains("authserv_id"), "{message}");
    let (_, message, _) = error(&format!(
        "{base}\n[checks]\ntrusted_forwarders = [\"10.0.0.0/33\"]\n"
    ));
    assert!(message.contains("10.0.0.0/33"), "{message}");
}

#[test]
fn smart_host_login_needs_both_keys_and_tls() {
    let base = format!("{MINIMAL}\n[outbound]\nsmart_host = \"smtp://relay.example.net:587\"\n");
    let c = Config::parse(
        &format!("{base}smart_host_tls = \"verify\"\nsmart_host_user = \"gw@example.org\"\nsmart_host_password_file = \"/etc/ravelin/pw\"\n"),
        "ravelin.toml",
    )
    .unwrap();
    assert_eq!(
        c.outbound.smart_host_user.as_deref(),
        Some("gw@example.org")
    );
    let (_, message, _) = error(&format!("{base}smart_host_user = \"gw@example.org\"\n"));
    assert!(message.contains("go together"), "{message}");
    let (_, message, fix) = error(&format!(
        "{base}smart_host_tls = \"may\"\nsmart_host_user = \"gw@example.org\"\nsmart_host_password_file = \"pw\"\n"
    ));
    assert!(message.contains("unencrypted"), "{message}");
    assert!(fix.contains("verify"), "{fix}");
}
