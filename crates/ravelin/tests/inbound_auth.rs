//! Sender authentication of inbound mail, end to end: the gateway's SPF, DKIM, DMARC and ARC
//! checks against test zones served by the in-process authoritative DNS server
//! (`[dns] nameservers` points at it), messages signed and ARC-sealed by dkimpy, the
//! Authentication-Results field read back with the `authres` package, DMARC reject and
//! quarantine with `ravelin quarantine`, and smtp-sink as the backend.

mod support;

use std::process::Command;
use std::time::Duration;

use ravelin_dns::testing::TestDnsServer;
use ravelin_gateway::dkim::{KeyAlgorithm, generate};
use support::*;

const HOST: &str = "mx.test.example";

/// A TXT record's text as zone-file strings of at most 255 octets each.
fn txt(text: &str) -> String {
    text.as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

struct World {
    dns: TestDnsServer,
    /// PKCS#8 PEM of the key every test domain publishes.
    key: tempfile::NamedTempFile,
}

fn world() -> World {
    let key = generate(KeyAlgorithm::Rsa).expect("RSA key");
    assert!(key.record.len() > 255, "the record must need splitting");
    let dkim = format!("IN TXT {}", txt(&key.record));
    let spf_loopback = "IN TXT \"v=spf1 ip4:127.0.0.0/8 -all\"";
    let spf_none_allowed = "IN TXT \"v=spf1 -all\"";
    let reject = "IN TXT \"v=DMARC1; p=reject\"";
    let zones = [
        // DMARC's tree walk asks for _dmarc.test as well: an empty zone answers NXDOMAIN, as
        // a TLD would (outside its zones the server answers REFUSED, a temporary error).
        ("test", String::new()),
        (
            "pass.test",
            format!("@ {spf_loopback}\nmail {spf_loopback}\n_dmarc {reject}\n"),
        ),
        (
            "fail.test",
            "@ IN TXT \"v=spf1 ip4:192.0.2.1 -all\"\n".into(),
        ),
        ("soft.test", "@ IN TXT \"v=spf1 ~all\"\n".into()),
        (
            "signed.test",
            format!("@ {spf_none_allowed}\n_dmarc {reject}\nsel._domainkey {dkim}\n"),
        ),
        (
            "reject.test",
            format!("@ {spf_none_allowed}\n_dmarc {reject}\n"),
        ),
        (
            "quar.test",
            format!("@ {spf_none_allowed}\n_dmarc IN TXT \"v=DMARC1; p=quarantine\"\n"),
        ),
        (
            "strict.test",
            format!("@ {spf_none_allowed}\n_dmarc {reject}\nsel._domainkey {dkim}\n"),
        ),
        (
            "list.test",
            format!("@ {spf_loopback}\narc._domainkey {dkim}\n"),
        ),
    ];
    let refs: Vec<(&str, &str)> = zones.iter().map(|(o, t)| (*o, t.as_str())).collect();
    let dns = TestDnsServer::start(&refs).expect("test DNS server");
    let mut file = tempfile::NamedTempFile::new().expect("key file");
    std::io::Write::write_all(&mut file, key.pem.as_bytes()).expect("write key");
    World { dns, key: file }
}

const SIGN: &str = r#"
import sys, dkim
mode, key, selector, domain = sys.argv[1:5]
msg = sys.stdin.buffer.read()
pem = open(key, 'rb').read()
if mode == 'dkim':
    sig = dkim.sign(msg, selector.encode(), domain.encode(), pem,
                    include_headers=[b'from', b'to', b'subject', b'date'])
    sys.stdout.buffer.write(sig + msg)
else:
    srv_id = sys.argv[5].encode()
    seal = dkim.arc_sign(msg, selector.encode(), domain.encode(), pem, srv_id,
                         include_headers=[b'from', b'to', b'subject', b'date'])
    sys.stdout.buffer.write(b''.join(seal) + msg)
"#;

/// `message` signed by dkimpy: DKIM (`mode` "dkim") or an ARC set (`mode` "arc", with the
/// authserv-id of the sealer's own Authentication-Results in `srv_id`).
fn dkimpy(
    world: &World,
    mode: &str,
    selector: &str,
    domain: &str,
    srv_id: &str,
    message: &[u8],
) -> Vec<u8> {
    let mut cmd = Command::new(venv_python());
    cmd.arg("-c").arg(SIGN).args([
        mode,
        &world.key.path().to_string_lossy(),
        selector,
        domain,
        srv_id,
    ]);
    let out = run_with_input(cmd, Some(message), Duration::from_secs(60));
    assert!(out.status.success(), "dkimpy {mode}: {}", describe(&out));
    assert!(
        out.stdout.len() > message.len(),
        "dkimpy {mode} added nothing"
    );
    out.stdout
}

const PARSE: &str = r#"
import sys, json, authres
h = authres.AuthenticationResultsHeader.parse(sys.stdin.read())
print(json.dumps({'id': h.authserv_id,
                  'results': [[r.method, r.result, {p.type + '.' + p.name: str(p.value) for p in r.properties}]
                              for r in h.results]}))
"#;

/// Our Authentication-Results field, parsed by the `authres` package: authserv-id and
/// `(method, result, properties)`.
fn authres(field: &str) -> (String, Vec<(String, String, serde_json::Value)>) {
    let mut cmd = Command::new(venv_python());
    cmd.arg("-c").arg(PARSE);
    let out = run_with_input(cmd, Some(field.as_bytes()), Duration::from_secs(30));
    assert!(
        out.status.success(),
        "authres on {field:?}: {}",
        describe(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("authres JSON");
    let results = v["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or("").to_string(),
                r[1].as_str().unwrap_or("").to_string(),
                r[2].clone(),
            )
        })
        .collect();
    (v["id"].as_str().unwrap_or("").to_string(), results)
}

/// The header fields of a delivered message, unfolded, in order: `(name, "Name: value")`.
fn fields(message: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(message).replace("\r\n", "\n");
    let header = text.split("\n\n").next().unwrap_or("");
    let mut out: Vec<(String, String)> = Vec::new();
    for line in header.lines() {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((name, _)) = line.split_once(':') {
            out.push((name.to_string(), line.to_string()));
        }
    }
    out
}

/// The result of `method` (the first one with `property` = `value`, if given).
fn result_of(
    results: &[(String, String, serde_json::Value)],
    method: &str,
    prop: Option<(&str, &str)>,
) -> String {
    results
        .iter()
        .find(|(m, _, p)| m == method && prop.is_none_or(|(k, v)| p[k] == v))
        .map(|(_, r, _)| r.clone())
        .unwrap_or_else(|| panic!("no {method} {prop:?} in {results:?}"))
}

fn message(from: &str, subject: &str, extra: &str) -> Vec<u8> {
    format!(
        "{extra}From: <{from}>\r\nTo: <bob@example.org>\r\nSubject: {subject}\r\nDate: Thu, 03 Dec 2026 11:00:00 +0000\r\nMessage-ID: <{subject}@test>\r\n\r\nHello Bob,\r\nthis is {subject}.\r\n"
    )
    .into_bytes()
}

fn gateway(world: &World, sink: &SmtpSink, extra: &[&str]) -> Ravelin {
    let mut config = RavelinConfig::inbound(sink.addr)
        .checks(world.dns.addr())
        .set("delivery", "scan_interval = \"1s\"");
    for line in extra {
        config = config.set("checks", line);
    }
    Ravelin::start(config)
}

/// Sends `data` with swaks (HELO `helo`); the final reply's line.
fn send(ravelin: &Ravelin, helo: &str, from: &str, data: &[u8]) -> String {
    let out = swaks_send(
        ravelin.addr(),
        from,
        "bob@example.org",
        data,
        &["--helo", helo],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The delivered message whose Subject is `subject`.
fn delivered(sink: &SmtpSink, subject: &str) -> SinkMessage {
    wait_until(
        &format!("{subject} at the sink"),
        Duration::from_secs(30),
        || {
            sink.messages().into_iter().find(|m| {
                fields(&m.message)
                    .iter()
                    .any(|(n, l)| n == "Subject" && l.ends_with(&format!(" {subject}")))
            })
        },
    )
}

/// Our Authentication-Results of a delivered message: the field right below our Received.
fn our_results(m: &SinkMessage) -> (String, Vec<(String, String, serde_json::Value)>) {
    let f = fields(&m.message);
    assert_eq!(f[0].0, "Received", "{f:?}");
    assert!(f[0].1.contains(&format!("by {HOST}")), "{f:?}");
    assert_eq!(f[1].0, "Authentication-Results", "{f:?}");
    let ours: Vec<_> = f
        .iter()
        .filter(|(n, l)| n == "Authentication-Results" && l.contains(HOST))
        .collect();
    assert_eq!(
        ours.len(),
        1,
        "exactly one field with our authserv-id: {f:?}"
    );
    let parsed = authres(&f[1].1);
    assert_eq!(parsed.0, HOST);
    parsed
}

#[test]
fn spf_and_dkim_results_and_forged_results_removed() {
    let world = world();
    let sink = SmtpSink::start();
    let ravelin = gateway(&world, &sink, &[]);

    // SPF pass for MAIL FROM and HELO, DMARC pass through aligned SPF.
    let reply = send(
        &ravelin,
        "mail.pass.test",
        "alice@pass.test",
        &message("alice@pass.test", "spf-pass", ""),
    );
    assert!(reply.contains("250 2.0.0 Ok: queued"), "{reply}");
    let (_, r) = our_results(&delivered(&sink, "spf-pass"));
    assert_eq!(
        result_of(&r, "spf", Some(("smtp.mailfrom", "alice@pass.test"))),
        "pass"
    );
    assert_eq!(
        result_of(&r, "spf", Some(("smtp.helo", "mail.pass.test"))),
        "pass"
    );
    assert_eq!(result_of(&r, "dkim", None), "none");
    assert_eq!(result_of(&r, "dmarc", None), "pass");

    // SPF fail and softfail without DMARC: recorded, delivered (SPF alone never refuses).
    send(
        &ravelin,
        "client.test",
        "x@fail.test",
        &message("x@fail.test", "spf-fail", ""),
    );
    let (_, r) = our_results(&delivered(&sink, "spf-fail"));
    assert_eq!(
        result_of(&r, "spf", Some(("smtp.mailfrom", "x@fail.test"))),
        "fail"
    );
    assert_eq!(result_of(&r, "dmarc", None), "none");
    send(
        &ravelin,
        "client.test",
        "x@soft.test",
        &message("x@soft.test", "spf-softfail", ""),
    );
    let (_, r) = our_results(&delivered(&sink, "spf-softfail"));
    assert_eq!(
        result_of(&r, "spf", Some(("smtp.mailfrom", "x@soft.test"))),
        "softfail"
    );

    // DKIM pass (dkimpy's RSA signature; the key's TXT record is split in 255-octet
    // strings): DMARC passes on DKIM although SPF fails under p=reject.
    let signed = dkimpy(
        &world,
        "dkim",
        "sel",
        "signed.test",
        "",
        &message("news@signed.test", "dkim-pass", ""),
    );
    let reply = send(&ravelin, "client.test", "news@signed.test", &signed);
    assert!(reply.contains("250 2.0.0 Ok: queued"), "{reply}");
    let (_, r) = our_results(&delivered(&sink, "dkim-pass"));
    assert_eq!(
        result_of(&r, "dkim", Some(("header.i", "@signed.test"))),
        "pass"
    );
    assert_eq!(
        result_of(&r, "spf", Some(("smtp.mailfrom", "news@signed.test"))),
        "fail"
    );
    assert_eq!(result_of(&r, "dmarc", None), "pass");

    // Forged results claiming our authserv-id go; another server's stay; the fields the
    // backend trusts from inside go.
    let forged = message(
        "alice@pass.test",
        "forged",
        &format!(
            "Authentication-Results: {HOST}; dkim=pass header.d=bank.example; dmarc=pass\r\n\
             Authentication-Results: MX.TEST.EXAMPLE; spf=pass\r\n\
             Authentication-Results: relay.other.example; spf=pass smtp.mailfrom=alice@pass.test\r\n\
             X-MS-Exchange-Organization-AuthAs: Internal\r\n\
             X-MS-Exchange-Organization-SCL: -1\r\n\
             X-MS-Exchange-CrossTenant-Id: 00000000-0000-0000-0000-000000000000\r\n\
             X-Forefront-Antispam-Report: SFV:SKN\r\n\
             X-Spam-Flag: NO\r\n"
        ),
    );
    send(&ravelin, "mail.pass.test", "alice@pass.test", &forged);
    let m = delivered(&sink, "forged");
    let (_, r) = our_results(&m);
    assert!(
        !r.iter()
            .any(|(m, _, p)| m == "dkim" && p["header.d"] == "bank.example"),
        "{r:?}"
    );
    let f = fields(&m.message);
    assert!(
        f.iter().any(|(_, l)| l.contains("relay.other.example")),
        "{f:?}"
    );
    assert!(
        !f.iter().any(|(n, _)| n.starts_with("X-MS-Exchange")),
        "{f:?}"
    );
    let checks = ravelin.events("auth_checks");
    assert_eq!(checks.len(), 5, "{checks:?}");
}

#[test]
fn dmarc_reject_and_quarantine_with_release() {
    let world = world();
    let sink = SmtpSink::start();
    let ravelin = gateway(&world, &sink, &[]);

    // p=reject and a DMARC fail: 550 5.7.1 at the end of data, nothing kept.
    let reply = send(
        &ravelin,
        "client.test",
        "ceo@reject.test",
        &message("ceo@reject.test", "spoofed", ""),
    );
    // At the end of DATA: the 354 came first.
    assert!(
        reply.contains("<-  354")
            && reply.contains("<** 550 5.7.1 Email rejected per DMARC policy for reject.test"),
        "{reply}"
    );
    for sub in ["queue", "incoming", "quarantine"] {
        assert!(
            ravelin.spool_entries(sub).is_empty(),
            "{sub}: {:?}",
            ravelin.spool_entries(sub)
        );
    }

    // p=quarantine: accepted, kept in the quarantine, not delivered.
    let reply = send(
        &ravelin,
        "client.test",
        "billing@quar.test",
        &message("billing@quar.test", "held", ""),
    );
    assert!(reply.contains("250 2.0.0 Ok: queued"), "{reply}");
    let out = ravelin.command(&["quarantine", "list", "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    let list = list.as_array().expect("array");
    assert_eq!(list.len(), 1, "{list:?}");
    let id = list[0]["id"].as_str().expect("id").to_string();
    assert_eq!(
        list[0]["info"]["reason"],
        "DMARC policy quarantine for quar.test"
    );
    assert!(
        list[0]["info"]["verdict"]
            .as_str()
            .unwrap_or("")
            .contains("dmarc=fail"),
        "{list:?}"
    );
    assert_eq!(list[0]["envelope"]["sender"], "billing@quar.test");
    let show = ravelin.command(&["quarantine", "show", &id]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        show.status.success() && text.contains("Subject: held"),
        "{text}"
    );
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        sink.messages().is_empty(),
        "a quarantined message reached the backend"
    );
    assert!(ravelin.spool_entries("queue").is_empty());

    // Release: it goes on to the backend, with the verdict on top.
    let out = ravelin.command(&["quarantine", "release", &id, "--json"]);
    assert!(out.status.success(), "{}", describe(&out));
    let m = delivered(&sink, "held");
    let (_, r) = our_results(&m);
    assert_eq!(result_of(&r, "dmarc", None), "fail");
    let out = ravelin.command(&["quarantine", "list", "--json"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");

    // Delete is final.
    send(
        &ravelin,
        "client.test",
        "billing@quar.test",
        &message("billing@quar.test", "held-again", ""),
    );
    let out = ravelin.command(&["quarantine", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("list JSON");
    let id = list[0]["id"].as_str().expect("id").to_string();
    assert!(
        ravelin
            .command(&["quarantine", "delete", &id])
            .status
            .success()
    );
    assert!(ravelin.spool_entries("quarantine").is_empty());
    assert!(
        !ravelin
            .command(&["quarantine", "release", &id])
            .status
            .success()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(sink.messages().len(), 1);
}

#[test]
fn arc_sealed_forward_from_a_trusted_forwarder_passes() {
    let world = world();
    let sink = SmtpSink::start();
    let ravelin = gateway(&world, &sink, &["trusted_forwarders = [\"list.test\"]"]);

    // strict.test signs; the list adds a footer (breaking the signature), records what it
    // saw and seals the result; then sends it from its own address with its own envelope.
    let original = dkimpy(
        &world,
        "dkim",
        "sel",
        "strict.test",
        "",
        &message("ceo@strict.test", "via-list", ""),
    );
    let mut modified = b"Authentication-Results: lists.list.test; dkim=pass header.d=strict.test; spf=pass smtp.mailfrom=ceo@strict.test\r\n".to_vec();
    modified.extend_from_slice(&original);
    modified.extend_from_slice(b"-- \r\nThe strict.test list\r\n");
    let sealed = dkimpy(
        &world,
        "arc",
        "arc",
        "list.test",
        "lists.list.test",
        &modified,
    );

    // Without the seal the broken signature fails DMARC under p=reject.
    let reply = send(&ravelin, "lists.list.test", "bounces@list.test", &modified);
    assert!(
        reply.contains("550 5.7.1 Email rejected per DMARC policy for strict.test"),
        "{reply}"
    );

    // With it, the chain passes and the sealer is trusted: delivered, results recorded.
    let reply = send(&ravelin, "lists.list.test", "bounces@list.test", &sealed);
    assert!(reply.contains("250 2.0.0 Ok: queued"), "{reply}");
    let (_, r) = our_results(&delivered(&sink, "via-list"));
    assert_eq!(result_of(&r, "arc", None), "pass");
    assert_eq!(result_of(&r, "dmarc", None), "fail");
    // The footer broke the body hash (RFC 6376 §6.3: neutral, not a valid signature).
    assert_eq!(
        result_of(&r, "dkim", Some(("header.i", "@strict.test"))),
        "neutral"
    );
    let ev = ravelin.wait_for_event("auth_checks", Duration::from_secs(5), |v| {
        v["exempt"] == "trusted forwarder"
    });
    assert_eq!(ev["decision"], "deliver");
}

#[test]
fn dns_silence_servfail_and_large_messages_never_refuse() {
    let world = world();
    let sink = SmtpSink::start();
    let ravelin = gateway(
        &world,
        &sink,
        &["deadline = \"2s\"", "max_verify_size = 65536"],
    );

    // The DMARC record does not come within the deadline: temperror, delivered.
    world.dns.set_fault(
        "_dmarc.reject.test",
        Some(ravelin_dns::testing::Fault::Silent),
    );
    let started = std::time::Instant::now();
    let reply = send(
        &ravelin,
        "client.test",
        "ceo@reject.test",
        &message("ceo@reject.test", "dns-silent", ""),
    );
    assert!(reply.contains("250 2.0.0 Ok: queued"), "{reply}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let (_, r) = our_results(&delivered(&sink, "dns-silent"));
    assert_eq!(result_of(&r, "dmarc", None), "temperror");

    // SERVFAIL for a domain's SPF and DMARC records (one not asked before: the resolver
    // caches): temperror both, delivered at once.
    for name in ["soft.test", "_dmarc.soft.test"] {
        world
            .dns
            .set_fault(name, Some(ravelin_dns::testing::Fault::ServFail));
    }
    let reply = send(
        &ravelin,
        "client.test",
        "ceo@soft.test",
        &message("ceo@soft.test", "dns-servfail", ""),
    );
    assert!(reply.contains("250 2.0.0 Ok: queued"), "{reply}");
    let (_, r) = our_results(&delivered(&sink, "dns-servfail"));
    assert_eq!(result_of(&r, "dmarc", None), "temperror");
    assert_eq!(
        result_of(&r, "spf", Some(("smtp.mailfrom", "ceo@soft.test"))),
        "temperror"
    );
    for name in ["soft.test", "_dmarc.soft.test"] {
        world.dns.set_fault(name, None);
    }

    // Over max_verify_size: signatures unchecked, DMARC judged on SPF alone (fail) and not
    // enforced.
    world.dns.set_fault("_dmarc.reject.test", None);
    let mut big = message("ceo@reject.test", "too-large", "");
    for _ in 0..1000 {
        big.extend_from_slice(&[b'x'; 98]);
        big.extend_from_slice(b"\r\n");
    }
    let reply = send(&ravelin, "client.test", "ceo@reject.test", &big);
    assert!(reply.contains("250 2.0.0 Ok: queued"), "{reply}");
    let m = delivered(&sink, "too-large");
    let (_, r) = our_results(&m);
    assert_eq!(result_of(&r, "dmarc", None), "fail");
    let f = fields(&m.message);
    assert!(
        f[1].1.contains("dkim=none (message too large to verify)"),
        "{f:?}"
    );
    let ev = ravelin.wait_for_event("auth_checks", Duration::from_secs(5), |v| {
        v["exempt"] == "message too large to verify"
    });
    assert_eq!(ev["decision"], "deliver");
}

#[test]
fn trusted_forwarder_networks_and_enforcement_switch() {
    let world = world();
    let sink = SmtpSink::start();
    let ravelin = gateway(&world, &sink, &["trusted_forwarders = [\"127.0.0.2/32\"]"]);
    let spoof = message("ceo@reject.test", "from-forwarder", "");

    // The listed forwarder's DMARC failure is delivered; anyone else's is refused.
    let out = swaks_send(
        ravelin.addr(),
        "ceo@reject.test",
        "bob@example.org",
        &spoof,
        &["--helo", "fwd.test", "--local-interface", "127.0.0.2"],
    );
    let reply = String::from_utf8_lossy(&out.stdout);
    assert!(reply.contains("250 2.0.0 Ok: queued"), "{reply}");
    let (_, r) = our_results(&delivered(&sink, "from-forwarder"));
    assert_eq!(result_of(&r, "dmarc", None), "fail");
    let reply = send(&ravelin, "client.test", "ceo@reject.test", &spoof);
    assert!(reply.contains("<** 550 5.7.1"), "{reply}");

    // enforce_dmarc = false: recorded only.
    let lenient = gateway(&world, &sink, &["enforce_dmarc = false"]);
    let reply = send(
        &lenient,
        "client.test",
        "ceo@reject.test",
        &message("ceo@reject.test", "not-enforced", ""),
    );
    assert!(reply.contains("250 2.0.0 Ok: queued"), "{reply}");
    let (_, r) = our_results(&delivered(&sink, "not-enforced"));
    assert_eq!(result_of(&r, "dmarc", None), "fail");
    let ev = lenient.wait_for_event("auth_checks", Duration::from_secs(5), |v| {
        v["exempt"] == "enforce_dmarc is off"
    });
    assert_eq!(ev["decision"], "deliver");
}
