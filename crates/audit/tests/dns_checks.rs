//! The DNS checks of `ravelin_audit::dns` against zones served by the in-process
//! authoritative server (ravelin_dns::testing): for every check, a domain that passes and
//! domains that fail it, each for its own reason. MTA-STS policies come from a real HTTPS
//! server on loopback with a test CA. DNSSEC and DANE run against the signed world (NSD +
//! unbound), see `dnssec_world_*`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use ravelin_audit::dns::{self, DnsCtx, DnsOptions, MxSet};
use ravelin_audit::target::{Endpoint, Role};
use ravelin_audit::{Finding, Severity, Status};
use ravelin_dns::Resolver;
use ravelin_dns::testing::{TestDnsServer, TestHttpsServer};
use ravelin_tls::testing::TestPki;

/// A TXT record's data split into strings of at most 255 octets, quoted for a zone file.
fn txt(text: &str) -> String {
    text.as_bytes()
        .chunks(255)
        .map(|c| format!("\"{}\"", String::from_utf8_lossy(c)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A DKIM key record with a fresh RSA key of `bits`.
fn dkim_rsa(bits: u32, extra: &str) -> String {
    let rsa = openssl::rsa::Rsa::generate(bits).expect("RSA key");
    let pkey = openssl::pkey::PKey::from_rsa(rsa).expect("key");
    let der = pkey.public_key_to_der().expect("SPKI");
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    txt(&format!("v=DKIM1; k=rsa;{extra} p={b64}"))
}

/// The zone `example.` with good and bad domains, one per check and reason.
fn zone() -> String {
    let spf_deep: String = (1..=6)
        .map(|i| {
            format!(
                "i{i}.spf-deep TXT \"v=spf1 a mx include:i{}.spf-deep.example -all\"\n",
                i + 1
            )
        })
        .collect();
    format!(
        r#"
; --- a domain that passes everything ------------------------------------------
good              MX 10 mx1.good
mx1.good          A 127.0.0.1
good              TXT "v=spf1 mx ip4:192.0.2.0/24 include:_spf.good.example -all"
_spf.good         TXT "v=spf1 ip4:198.51.100.0/24 -all"
_dmarc.good       TXT "v=DMARC1; p=reject; rua=mailto:dmarc@good.example,mailto:agg@collector.example"
good.example._report._dmarc.collector TXT "v=DMARC1"
selector1._domainkey.good TXT {dkim_good}
custom._domainkey.good TXT {dkim_custom}
_mta-sts.good     TXT "v=STSv1; id=2024a;"
mta-sts.good      A 127.0.0.1
_smtp._tls.good   TXT "v=TLSRPTv1; rua=mailto:tls@good.example"
good              CAA 0 issue "letsencrypt.org"
good              CAA 0 iodef "mailto:security@good.example"
sub.good          A 127.0.0.1

; --- dns.mx -------------------------------------------------------------------
nullmx            MX 0 .
nomx              A 127.0.0.1
noaddr            TXT "nothing"
badmx             MX 10 mx1.badmx
badmx             MX 20 mx1.badmx.example.
badmx             MX 30 alias.badmx
badmx             MX 40 gone.badmx
mx1.badmx         A 127.0.0.1
alias.badmx       CNAME mx1.badmx
mixednull         MX 0 .
dualstack         MX 10 mx.dualstack
dualstack         MX 20 mx2.dualstack
mx.dualstack      A 127.0.0.1
mx.dualstack      AAAA ::1
mx2.dualstack     AAAA ::1
mixednull         MX 10 mx1.good.example.

; --- dns.spf ------------------------------------------------------------------
spf-two           TXT "v=spf1 -all"
spf-two           TXT "v=spf1 mx -all"
spf-plusall       TXT "v=spf1 mx +all"
spf-neutral       TXT "v=spf1 mx ?all"
spf-noall         TXT "v=spf1 mx"
spf-syntax        TXT "v=spf1 ip4:300.1.2.3 -all"
spf-ptr           TXT "v=spf1 ptr -all"
spf-void          TXT "v=spf1 a:v1.spf-void.example a:v2.spf-void.example a:v3.spf-void.example mx -all"
spf-missing-inc   TXT "v=spf1 include:nothing-here.example -all"
spf-deep          TXT "v=spf1 include:i1.spf-deep.example -all"
{spf_deep}i7.spf-deep TXT "v=spf1 -all"
spf-redirect      TXT "v=spf1 redirect=_spf.good.example"
spf-loop          TXT "v=spf1 include:spf-loop2.example -all"
spf-loop2         TXT "v=spf1 include:spf-loop.example -all"

; --- dns.dmarc ----------------------------------------------------------------
_dmarc.dmarc-pnone TXT "v=DMARC1; p=none; rua=mailto:d@dmarc-pnone.example"
_dmarc.dmarc-weak TXT "v=DMARC1; p=reject; sp=none; pct=50; t=y; rua=mailto:agg@outsider.example"
_dmarc.dmarc-syntax TXT "v=DMARC1; p=sometimes"
_dmarc.dmarc-two  TXT "v=DMARC1; p=reject"
_dmarc.dmarc-two  TXT "v=DMARC1; p=none"
; Organisations by the tree walk, without the Public Suffix List: psl-like.example has no
; record (like co.uk, its children are separate organisations); psd-zone.example says so with
; psd=y; own-reports.example sends reports to its own subdomain.
_dmarc.shop.psl-like TXT "v=DMARC1; p=reject; rua=mailto:agg@reports.psl-like.example"
_dmarc.psd-zone   TXT "v=DMARC1; p=reject; psd=y"
_dmarc.shop.psd-zone TXT "v=DMARC1; p=reject; rua=mailto:agg@other.psd-zone.example"
_dmarc.own-reports TXT "v=DMARC1; p=reject; rua=mailto:d@reports.own-reports.example"

; --- dns.dkim -----------------------------------------------------------------
default._domainkey.dkim-short TXT {dkim_1024}
default._domainkey.dkim-tiny TXT {dkim_512}
default._domainkey.dkim-revoked TXT "v=DKIM1; k=rsa; p="
default._domainkey.dkim-test TXT {dkim_testing}
; `_domainkey` itself a CNAME to a name that does not exist, keys below it all the same
_domainkey.dkim-cname CNAME gone.example.
default._domainkey.dkim-cname TXT {dkim_good}

; --- dns.mta_sts --------------------------------------------------------------
_mta-sts.sts-mismatch TXT "v=STSv1; id=1;"
mta-sts.sts-mismatch A 127.0.0.1
sts-mismatch      MX 10 mx.elsewhere.example.
mx.elsewhere      A 127.0.0.1
_mta-sts.sts-testing TXT "v=STSv1; id=1;"
mta-sts.sts-testing A 127.0.0.1
_mta-sts.sts-unfetchable TXT "v=STSv1; id=1;"
_mta-sts.sts-badtxt TXT "v=STSv1; id=not valid!;"

; --- dns.tlsrpt ---------------------------------------------------------------
_smtp._tls.tlsrpt-bad TXT "v=TLSRPTv1; rua=ftp://x.example"

; --- dns.caa ------------------------------------------------------------------
caa-critical      CAA 128 tbs "unknown"
caa-critical      CAA 0 issue "letsencrypt.org"
"#,
        dkim_good = dkim_rsa(2048, ""),
        dkim_custom = dkim_rsa(2048, ""),
        dkim_1024 = dkim_rsa(1024, ""),
        dkim_512 = dkim_rsa(512, ""),
        dkim_testing = dkim_rsa(2048, " t=y;"),
    )
}

/// The reverse zone of 127.0.0.0/24 and a DNS blocklist zone.
const REVERSE: &str = "1 PTR mx1.good.example.\n8 PTR mx1.good.example.\n";
const BLOCKLIST: &str = "2.0.0.127 A 127.0.0.2\n2.0.0.127 TXT \"listed: see https://bl.test/2\"\n3.0.0.127 A 127.255.255.254\n";

struct World {
    dns: TestDnsServer,
    resolver: Resolver,
    options: DnsOptions,
    https: TestHttpsServer,
    _dir: tempfile::TempDir,
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("mta-sts.good.example").unwrap();
    let files = pki.write_to(dir.path()).unwrap();
    let dns = TestDnsServer::start(&[
        ("example", &zone()),
        ("0.0.127.in-addr.arpa", REVERSE),
        ("bl.test", BLOCKLIST),
    ])
    .expect("test DNS server");
    let https = TestHttpsServer::start(&files.cert, &files.key).expect("test HTTPS server");
    https.serve_policy(
        "version: STSv1\r\nmode: enforce\r\nmx: mx1.good.example\r\nmax_age: 604800\r\n",
    );
    let options = DnsOptions {
        dkim_selectors: vec!["custom".into()],
        dnsbl_zones: vec!["bl.test".into(), "dnsbl.sorbs.net".into()],
        dnsbl_deadline: Duration::from_secs(5),
        mta_sts_port: https.addr().port(),
        mta_sts_ca_file: Some(files.ca.clone()),
        mta_sts_timeout: Duration::from_secs(5),
        ..DnsOptions::default()
    };
    World {
        resolver: dns.resolver().unwrap(),
        dns,
        options,
        https,
        _dir: dir,
    }
}

impl World {
    fn ctx<'a>(&'a self, domain: &'a str) -> DnsCtx<'a> {
        DnsCtx {
            resolver: &self.resolver,
            options: &self.options,
            domain,
        }
    }

    async fn mx(&self, domain: &str) -> MxSet {
        dns::mx::resolve(&self.resolver, domain).await
    }
}

fn expect(f: &Finding, id: &str, status: Status, evidence: &str) {
    assert_eq!(f.id, id);
    assert_eq!(
        f.status, status,
        "{id}: expected {status:?}: {} — {}\n{}",
        f.endpoint, f.title, f.evidence
    );
    assert!(
        f.evidence.contains(evidence) || f.title.contains(evidence),
        "{id} on {}: {evidence:?} not in {} / {}",
        f.endpoint,
        f.title,
        f.evidence
    );
    if matches!(status, Status::Fail | Status::Warn) {
        assert!(!f.fix.is_empty(), "{id} on {}: no fix", f.endpoint);
    }
}

#[tokio::test]
async fn mx_records() {
    let w = world();
    let check = |domain: &'static str| {
        let w = &w;
        async move { dns::mx::finding(&w.ctx(domain), &w.mx(domain).await) }
    };
    let good = w.mx("good.example").await;
    assert_eq!(good.hosts.len(), 1);
    assert_eq!(
        good.hosts[0].addresses,
        vec!["127.0.0.1".parse::<std::net::IpAddr>().unwrap()]
    );
    expect(
        &check("good.example").await,
        "dns.mx",
        Status::Pass,
        "MX 10 mx1.good.example → 127.0.0.1",
    );
    let null = w.mx("nullmx.example").await;
    assert!(null.is_null() && null.hosts.is_empty());
    expect(
        &check("nullmx.example").await,
        "dns.mx",
        Status::Pass,
        "null MX",
    );
    let implicit = w.mx("nomx.example").await;
    assert!(implicit.is_implicit());
    assert_eq!(implicit.hosts[0].name, "nomx.example");
    expect(
        &check("nomx.example").await,
        "dns.mx",
        Status::Warn,
        "implicit MX",
    );
    expect(
        &check("noaddr.example").await,
        "dns.mx",
        Status::Fail,
        "no address",
    );
    expect(
        &check("missing.example").await,
        "dns.mx",
        Status::Fail,
        "NXDOMAIN",
    );
    let bad = check("badmx.example").await;
    expect(
        &bad,
        "dns.mx",
        Status::Fail,
        "mx1.badmx.example is listed more than once",
    );
    expect(
        &bad,
        "dns.mx",
        Status::Fail,
        "alias.badmx.example is a CNAME to mx1.badmx.example",
    );
    expect(
        &bad,
        "dns.mx",
        Status::Fail,
        "gone.badmx.example has no address",
    );
    assert_eq!(bad.severity, Severity::High);
    expect(
        &check("mixednull.example").await,
        "dns.mx",
        Status::Fail,
        "a null MX (`0 .`) next to other MX records",
    );
    w.dns
        .set_fault("flaky.example", Some(ravelin_dns::testing::Fault::ServFail));
    expect(
        &check("flaky.example").await,
        "dns.mx",
        Status::Error,
        "SERVFAIL",
    );
}

#[tokio::test]
async fn spf_records() {
    let w = world();
    let check = |domain: &'static str| {
        let w = &w;
        async move { dns::spf::check(&w.ctx(domain)).await }
    };
    let good = check("good.example").await;
    expect(&good, "dns.spf", Status::Pass, "2 DNS-querying terms");
    expect(
        &check("spf-redirect.example").await,
        "dns.spf",
        Status::Pass,
        "-all",
    );
    expect(
        &check("nomx.example").await,
        "dns.spf",
        Status::Fail,
        "no SPF record",
    );
    let two = check("spf-two.example").await;
    expect(&two, "dns.spf", Status::Fail, "2 records");
    assert_eq!(two.severity, Severity::High);
    expect(
        &check("spf-plusall.example").await,
        "dns.spf",
        Status::Fail,
        "+all",
    );
    expect(
        &check("spf-neutral.example").await,
        "dns.spf",
        Status::Warn,
        "?all",
    );
    expect(
        &check("spf-noall.example").await,
        "dns.spf",
        Status::Warn,
        "no \"all\" mechanism",
    );
    expect(
        &check("spf-syntax.example").await,
        "dns.spf",
        Status::Fail,
        "syntax error",
    );
    expect(
        &check("spf-ptr.example").await,
        "dns.spf",
        Status::Warn,
        "ptr",
    );
    let void = check("spf-void.example").await;
    expect(&void, "dns.spf", Status::Fail, "4 void lookups");
    expect(
        &check("spf-missing-inc.example").await,
        "dns.spf",
        Status::Fail,
        "include:nothing-here.example has no SPF record",
    );
    let deep = check("spf-deep.example").await;
    expect(&deep, "dns.spf", Status::Fail, "19 DNS-querying terms");
    expect(
        &check("spf-loop.example").await,
        "dns.spf",
        Status::Fail,
        "loops back",
    );
}

#[tokio::test]
async fn dmarc_records() {
    let w = world();
    let check = |domain: &'static str| {
        let w = &w;
        async move { dns::dmarc::check(&w.ctx(domain)).await }
    };
    expect(
        &check("good.example").await,
        "dns.dmarc",
        Status::Pass,
        "p=reject",
    );
    // No record at the subdomain: the organisational domain's policy applies.
    expect(
        &check("sub.good.example").await,
        "dns.dmarc",
        Status::Pass,
        "organisational domain",
    );
    let missing = check("nomx.example").await;
    expect(&missing, "dns.dmarc", Status::Fail, "no DMARC record");
    assert_eq!(missing.severity, Severity::High);
    expect(
        &check("dmarc-pnone.example").await,
        "dns.dmarc",
        Status::Fail,
        "p=none",
    );
    let weak = check("dmarc-weak.example").await;
    for part in [
        "sp=none is weaker",
        "pct=50",
        "t=y",
        "outsider.example",
        "dmarc-weak.example._report._dmarc.outsider.example",
    ] {
        expect(&weak, "dns.dmarc", Status::Fail, part);
    }
    expect(
        &check("dmarc-syntax.example").await,
        "dns.dmarc",
        Status::Fail,
        "syntax error",
    );
    expect(
        &check("dmarc-two.example").await,
        "dns.dmarc",
        Status::Fail,
        "several DMARC records",
    );
    // Report addresses in a sibling under a public suffix belong to another organisation and
    // need its authorisation; a subdomain of the organisation's own does not.
    for (domain, dest) in [
        ("shop.psl-like.example", "reports.psl-like.example"),
        ("shop.psd-zone.example", "other.psd-zone.example"),
    ] {
        let f = check(domain).await;
        expect(
            &f,
            "dns.dmarc",
            Status::Warn,
            &format!("{domain}._report._dmarc.{dest}"),
        );
        assert_eq!(f.severity, Severity::Low, "{f:#?}");
    }
    expect(
        &check("own-reports.example").await,
        "dns.dmarc",
        Status::Pass,
        "rua=mailto:d@reports.own-reports.example",
    );
}

#[tokio::test]
async fn dkim_keys() {
    let w = world();
    let check = |domain: &'static str| {
        let w = &w;
        async move { dns::dkim::check(&w.ctx(domain)).await }
    };
    let good = check("good.example").await;
    expect(&good, "dns.dkim", Status::Pass, "selector1: RSA 2048");
    // The selector given with --dkim-selector is tried too.
    expect(&good, "dns.dkim", Status::Pass, "custom: RSA 2048");
    // No name below `_domainkey.nomx.example`: NXDOMAIN there (RFC 8020) spares the common
    // selectors; the one given with --dkim-selector is still asked.
    let before = w.dns.queries();
    let none = check("nomx.example").await;
    expect(
        &none,
        "dns.dkim",
        Status::Warn,
        "_domainkey.nomx.example does not exist (NXDOMAIN), so no selector below it does",
    );
    expect(
        &none,
        "dns.dkim",
        Status::Warn,
        "no key under the selectors given either: custom",
    );
    assert_eq!(w.dns.queries() - before, 2, "_domainkey and custom only");
    // A domain with keys: `_domainkey` exists (NODATA), so every selector is asked.
    let before = w.dns.queries();
    check("dkim-test.example").await;
    assert_eq!(
        w.dns.queries() - before,
        2 + dns::dkim::COMMON_SELECTORS.len()
    );
    // A TXT query for `_domainkey.dkim-cname.example` would follow its CNAME to NXDOMAIN;
    // the shortcut asks for the CNAME itself and so still finds the key below it.
    expect(
        &check("dkim-cname.example").await,
        "dns.dkim",
        Status::Pass,
        "default: RSA 2048",
    );
    let short = check("dkim-short.example").await;
    expect(
        &short,
        "dns.dkim",
        Status::Warn,
        "RSA 1024 bits, under the 2048",
    );
    let tiny = check("dkim-tiny.example").await;
    expect(&tiny, "dns.dkim", Status::Fail, "RSA 512 bits, under 1024");
    expect(
        &check("dkim-revoked.example").await,
        "dns.dkim",
        Status::Warn,
        "every key found is revoked",
    );
    expect(
        &check("dkim-test.example").await,
        "dns.dkim",
        Status::Warn,
        "t=y",
    );
}

#[tokio::test]
async fn mta_sts_policies() {
    let w = world();
    let check = |domain: &'static str| {
        let w = &w;
        async move { dns::mta_sts::check(&w.ctx(domain), &w.mx(domain).await).await }
    };
    expect(
        &check("good.example").await,
        "dns.mta_sts",
        Status::Pass,
        "mode enforce",
    );
    assert!(w.https.requests() >= 1);
    expect(
        &check("nomx.example").await,
        "dns.mta_sts",
        Status::Warn,
        "no MTA-STS",
    );
    expect(
        &check("sts-badtxt.example").await,
        "dns.mta_sts",
        Status::Fail,
        "invalid",
    );
    expect(
        &check("sts-unfetchable.example").await,
        "dns.mta_sts",
        Status::Fail,
        "cannot be fetched",
    );
    // The certificate names mta-sts.good.example only: validation refuses the other host.
    let mismatch = check("sts-mismatch.example").await;
    expect(&mismatch, "dns.mta_sts", Status::Fail, "cannot be fetched");
    assert!(mismatch.evidence.contains("TLS"), "{}", mismatch.evidence);
}

/// MX patterns against the real MX, and the testing mode, with a certificate for each host.
#[tokio::test]
async fn mta_sts_patterns_and_mode() {
    let w = world();
    for (domain, policy, status, evidence) in [
        (
            "sts-mismatch.example",
            "version: STSv1\nmode: enforce\nmx: mx1.good.example\nmax_age: 604800\n",
            Status::Fail,
            "MX mx.elsewhere.example matches no mx pattern",
        ),
        (
            "sts-testing.example",
            "version: STSv1\nmode: testing\nmx: *.example\nmax_age: 3600\n",
            Status::Warn,
            "mode: testing",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let files = TestPki::new(&format!("mta-sts.{domain}"))
            .unwrap()
            .write_to(dir.path())
            .unwrap();
        let https = TestHttpsServer::start(&files.cert, &files.key).unwrap();
        https.serve_policy(policy);
        let options = DnsOptions {
            mta_sts_port: https.addr().port(),
            mta_sts_ca_file: Some(files.ca.clone()),
            ..w.options.clone()
        };
        let ctx = DnsCtx {
            resolver: &w.resolver,
            options: &options,
            domain,
        };
        let f = dns::mta_sts::check(&ctx, &w.mx(domain).await).await;
        expect(&f, "dns.mta_sts", status, evidence);
        if domain == "sts-testing.example" {
            expect(&f, "dns.mta_sts", status, "max_age: 3600 seconds");
        }
    }
}

/// The policy against the MX endpoints' TLS: an enforced policy with an MX whose certificate
/// fails validation is a failure; a sound MX changes nothing.
#[tokio::test]
async fn mta_sts_policy_against_the_mx_certificates() {
    let w = world();
    let policy = dns::mta_sts::check(&w.ctx("good.example"), &w.mx("good.example").await).await;
    expect(&policy, "dns.mta_sts", Status::Pass, "mode enforce");
    let endpoint = "mx1.good.example[127.0.0.1]:25";
    let tls = |id: &str, status| {
        Finding::new(
            id,
            status,
            Severity::High,
            endpoint,
            "certificate not trusted",
            "",
        )
    };
    let mut sound = policy.clone();
    dns::mta_sts::certificates(
        &mut sound,
        &[
            tls("tls.cert_chain", Status::Pass),
            tls("tls.cert_hostname", Status::Pass),
        ],
    );
    assert_eq!(sound, policy);
    let mut broken = policy.clone();
    dns::mta_sts::certificates(
        &mut broken,
        &[
            tls("tls.cert_chain", Status::Fail),
            tls("tls.cert_hostname", Status::Pass),
        ],
    );
    expect(
        &broken,
        "dns.mta_sts",
        Status::Fail,
        "MX mx1.good.example[127.0.0.1]:25: certificate not trusted (tls.cert_chain)",
    );
    assert_eq!(broken.severity, Severity::High);
    // Other checks are left alone.
    let mut other = tls("tls.cert_chain", Status::Pass);
    let before = other.clone();
    dns::mta_sts::certificates(&mut other, &[tls("tls.cert_chain", Status::Fail)]);
    assert_eq!(other, before);
}

#[tokio::test]
async fn tlsrpt_and_caa() {
    let w = world();
    let ctx = |d: &'static str| w.ctx(d);
    expect(
        &dns::tlsrpt::check(&ctx("good.example")).await,
        "dns.tlsrpt",
        Status::Pass,
        "v=TLSRPTv1",
    );
    expect(
        &dns::tlsrpt::check(&ctx("nomx.example")).await,
        "dns.tlsrpt",
        Status::Warn,
        "no TLS-RPT",
    );
    expect(
        &dns::tlsrpt::check(&ctx("tlsrpt-bad.example")).await,
        "dns.tlsrpt",
        Status::Fail,
        "ftp",
    );
    expect(
        &dns::caa::check(&ctx("good.example")).await,
        "dns.caa",
        Status::Pass,
        "issue \"letsencrypt.org\"",
    );
    // The closest parent with CAA records counts: sub.good has none of its own.
    expect(
        &dns::caa::check(&ctx("sub.good.example")).await,
        "dns.caa",
        Status::Pass,
        "good.example. CAA 0 issue",
    );
    expect(
        &dns::caa::check(&ctx("nomx.example")).await,
        "dns.caa",
        Status::Warn,
        "no CAA records",
    );
    expect(
        &dns::caa::check(&ctx("caa-critical.example")).await,
        "dns.caa",
        Status::Fail,
        "\"tbs\" is flagged critical",
    );
}

fn endpoint(ip: &str) -> Endpoint {
    Endpoint {
        name: Some("mx1.good.example".into()),
        addr: SocketAddr::new(ip.parse().unwrap(), 25),
        role: Role::Mx,
        domain: Some("good.example".into()),
    }
}

#[tokio::test]
async fn ptr_and_dnsbl() {
    let w = world();
    let smtp = ravelin_audit::smtp::SmtpOptions::default();
    let ptr = |ip: &'static str| {
        let (w, smtp) = (&w, &smtp);
        async move { dns::ptr::check(&w.resolver, &endpoint(ip), false, smtp).await }
    };
    expect(
        &ptr("127.0.0.1").await,
        "dns.ptr",
        Status::Pass,
        "forward-confirmed as mx1.good.example",
    );
    expect(&ptr("127.0.0.9").await, "dns.ptr", Status::Fail, "no PTR");
    expect(
        &ptr("127.0.0.8").await,
        "dns.ptr",
        Status::Fail,
        "does not resolve back",
    );

    let bl = |ip: &'static str| {
        let w = &w;
        async move { dns::dnsbl::check(&w.resolver, &endpoint(ip), &w.options).await }
    };
    let clean = bl("127.0.0.1").await;
    expect(
        &clean,
        "reputation.dnsbl",
        Status::Pass,
        "bl.test: not listed",
    );
    // A retired list is named and never asked.
    expect(
        &clean,
        "reputation.dnsbl",
        Status::Pass,
        "dnsbl.sorbs.net: not queried (retired list)",
    );
    let listed = bl("127.0.0.2").await;
    expect(
        &listed,
        "reputation.dnsbl",
        Status::Fail,
        "listed (127.0.0.2): listed: see https://bl.test/2",
    );
    assert_eq!(listed.severity, Severity::High);
    // 127.255.255.254 is the list refusing the query, not a listing.
    let refused = bl("127.0.0.3").await;
    expect(&refused, "reputation.dnsbl", Status::Error, "query refused");
    assert!(!refused.title.contains("listed on"), "{}", refused.title);
    // IPv4-only lists are not asked about IPv6 addresses: their NXDOMAIN is no verdict.
    let v6 = DnsOptions {
        dnsbl_zones: vec!["bl.test".into(), "bl.spamcop.net".into()],
        ..w.options.clone()
    };
    let mut six = endpoint("127.0.0.1");
    six.addr = "[::1]:25".parse().unwrap();
    let f = dns::dnsbl::check(&w.resolver, &six, &v6).await;
    expect(
        &f,
        "reputation.dnsbl",
        Status::Pass,
        "bl.spamcop.net: not queried (lists IPv4 addresses only)",
    );
    expect(&f, "reputation.dnsbl", Status::Pass, "bl.test: not listed");
}

/// The whole domain audit on the good domain: every domain-level check is there once, none
/// fails (DNSSEC is skipped: the test server's answers are never trusted as validated).
#[tokio::test]
async fn audit_domain_reports_every_family() {
    let w = world();
    let ctx = w.ctx("good.example");
    let mx = w.mx("good.example").await;
    let findings = dns::audit_domain(&ctx, &mx).await;
    let ids: Vec<&str> = findings.iter().map(|f| f.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "dns.mx",
            "dns.spf",
            "dns.dmarc",
            "dns.dkim",
            "dns.mta_sts",
            "dns.tlsrpt",
            "dns.dnssec",
            "dns.caa"
        ]
    );
    for f in &findings {
        assert!(
            matches!(f.status, Status::Pass | Status::Skipped),
            "{}: {:?} {} — {}",
            f.id,
            f.status,
            f.title,
            f.evidence
        );
        assert_eq!(f.endpoint, "good.example");
        assert!(dns::describe(&f.id).is_some());
    }
    // A domain that takes no mail has nothing for MTA-STS and TLS-RPT to protect.
    let ctx = w.ctx("nullmx.example");
    let findings = dns::audit_domain(&ctx, &w.mx("nullmx.example").await).await;
    for id in ["dns.mta_sts", "dns.tlsrpt"] {
        let f = findings.iter().find(|f| f.id == id).unwrap();
        expect(f, id, Status::Skipped, "null MX");
    }
    // Resolving the MX set alongside the checks (`run`'s path) reports the same findings,
    // in the same order, as resolving it first; `then` gets the MX set.
    for domain in ["good.example", "nullmx.example"] {
        let ctx = w.ctx(domain);
        let (mx, alongside, hosts) =
            dns::resolve_and_audit(&ctx, |mx| async move { mx.hosts.len() }).await;
        assert_eq!(mx, w.mx(domain).await);
        assert_eq!(hosts, mx.hosts.len());
        let first = dns::audit_domain(&ctx, &mx).await;
        let summary = |f: &[ravelin_audit::Finding]| -> Vec<(String, Status, String)> {
            f.iter()
                .map(|f| (f.id.clone(), f.status, f.evidence.clone()))
                .collect()
        };
        assert_eq!(summary(&alongside), summary(&first), "{domain}");
    }
}

/// A minimal SMTP server with STARTTLS on 127.0.0.1 (greeting, EHLO, STARTTLS, QUIT), enough
/// for a TLS handshake after STARTTLS; it serves until the test ends.
fn starttls_server(cert: &std::path::Path, key: &std::path::Path) -> SocketAddr {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let config = ravelin_tls::server_config(cert, key).expect("server TLS config");
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let mut tcp = BufReader::new(tcp);
                    let _ = tcp.write_all(b"220 mx.dane.test ESMTP\r\n").await;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        if tcp.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let verb = line.trim().to_ascii_uppercase();
                        if verb.starts_with("EHLO") {
                            let _ = tcp.write_all(b"250-mx.dane.test\r\n250 STARTTLS\r\n").await;
                        } else if verb == "STARTTLS" {
                            let _ = tcp.write_all(b"220 2.0.0 go ahead\r\n").await;
                            let Ok(mut tls) = acceptor.accept(tcp.into_inner()).await else {
                                return;
                            };
                            let mut buf = [0u8; 512];
                            while let Ok(n) =
                                tokio::io::AsyncReadExt::read(&mut tls, &mut buf).await
                            {
                                if n == 0 {
                                    return;
                                }
                                let _ = tls.write_all(b"250 ok\r\n").await;
                            }
                            return;
                        } else if verb == "QUIT" {
                            let _ = tcp.write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            let _ = tcp.write_all(b"250 ok\r\n").await;
                        }
                    }
                });
            }
        });
    });
    addr
}

/// SHA-256 of the SubjectPublicKeyInfo of a PEM certificate, hex (a `3 1 1` TLSA record).
fn spki_sha256(cert_pem: &str) -> String {
    let cert = openssl::x509::X509::from_pem(cert_pem.as_bytes()).unwrap();
    let spki = cert.public_key().unwrap().public_key_to_der().unwrap();
    openssl::sha::sha256(&spki)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `dns.dnssec` and `dns.dane` through unbound validating zones that NSD serves: signed,
/// bogus and unsigned; TLSA records that match the certificate a STARTTLS server presents,
/// that do not, and that are not secure.
#[tokio::test]
async fn dnssec_world_dnssec_and_dane() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("mx.dane.test").unwrap();
    let files = pki.write_to(dir.path()).unwrap();
    let smtp = starttls_server(&files.cert, &files.key);
    let port = smtp.port();
    let good = spki_sha256(&pki.cert_pem);
    let other = "ab".repeat(32);
    let signed = format!(
        "@ IN MX 10 mx\nmx IN A 127.0.0.1\n_{port}._tcp.mx IN TLSA 3 1 1 {good}\n\
         _{port}._tcp.mx IN TLSA 3 1 1 {other}\nsingle IN A 127.0.0.1\n\
         _{port}._tcp.single IN TLSA 3 1 1 {good}\nwrong IN A 127.0.0.1\n\
         _{port}._tcp.wrong IN TLSA 3 1 1 {other}\nnotlsa IN A 127.0.0.1\n"
    );
    let plain = format!("@ IN MX 10 mx\nmx IN A 127.0.0.1\n_{port}._tcp.mx IN TLSA 3 1 1 {good}\n");
    let world = ravelin_dns::testing::DnssecWorld::builder()
        .signed_zone("dane.test", &signed)
        .bogus_zone("bogus.test", "@ IN MX 10 mx\nmx IN A 127.0.0.1\n")
        .unsigned_zone("plain.test", &plain)
        .start()
        .expect("DNSSEC world (scripts/install-test-deps.sh installs nsd, unbound, ldnsutils)");
    let resolver = world.resolver().unwrap();
    let options = DnsOptions::default();

    let dnssec = |domain: &'static str| {
        let (resolver, options) = (&resolver, &options);
        async move {
            let ctx = DnsCtx {
                resolver,
                options,
                domain,
            };
            let mx = dns::mx::resolve(resolver, domain).await;
            dns::dnssec::check(&ctx, &mx).await
        }
    };
    expect(
        &dnssec("dane.test").await,
        "dns.dnssec",
        Status::Pass,
        "MX mx.dane.test: signed, validated",
    );
    expect(
        &dnssec("bogus.test").await,
        "dns.dnssec",
        Status::Fail,
        "SERVFAIL",
    );
    expect(
        &dnssec("plain.test").await,
        "dns.dnssec",
        Status::Warn,
        "unsigned zone",
    );

    let tls = Arc::new(ravelin_audit::tls::TlsOptions {
        timeout: Duration::from_secs(5),
        ..Default::default()
    });
    let dane = |host: &'static str| {
        let (resolver, tls) = (&resolver, &tls);
        async move {
            let endpoint = Endpoint {
                name: Some(host.into()),
                addr: smtp,
                role: Role::Mx,
                domain: None,
            };
            dns::dane::check(resolver, &endpoint, true, tls).await
        }
    };
    expect(
        &dane("mx.dane.test").await,
        "dns.dane",
        Status::Pass,
        &format!("matching: 3 1 1 {good}"),
    );
    expect(
        &dane("single.dane.test").await,
        "dns.dane",
        Status::Warn,
        "rollover",
    );
    let wrong = dane("wrong.dane.test").await;
    expect(&wrong, "dns.dane", Status::Fail, "no TLSA record matches");
    expect(
        &wrong,
        "dns.dane",
        Status::Fail,
        &format!("leaf key 3 1 1 {good}"),
    );
    expect(
        &dane("notlsa.dane.test").await,
        "dns.dane",
        Status::Info,
        "DANE is not used",
    );
    expect(
        &dane("mx.plain.test").await,
        "dns.dane",
        Status::Fail,
        "not DNSSEC-secure",
    );
    // The test DNS server's answers are never trusted as validated: skipped, not passed.
    let untrusted = TestDnsServer::start(&[("dane.test", &signed)]).unwrap();
    let endpoint = Endpoint {
        name: Some("mx.dane.test".into()),
        addr: smtp,
        role: Role::Mx,
        domain: None,
    };
    let skipped = dns::dane::check(&untrusted.resolver().unwrap(), &endpoint, true, &tls).await;
    expect(&skipped, "dns.dane", Status::Skipped, "not trusted");
}

/// The Python interpreter of the test venv (`.venv` at the repository root).
fn venv_python() -> std::path::PathBuf {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh (it installs checkdmarc)",
        python.display()
    );
    python
}

/// Runs checkdmarc's SPF and DMARC checks on `domains` through the DNS server at `port`.
fn checkdmarc(port: u16, domains: &[&str]) -> serde_json::Value {
    const DRIVER: &str = r#"
import json, sys
import dns.resolver
from checkdmarc import spf, dmarc
resolver = dns.resolver.Resolver(configure=False)
resolver.nameservers = ["127.0.0.1"]
resolver.port = int(sys.argv[1])
resolver.timeout = 2
resolver.lifetime = 4
out = {}
for domain in sys.argv[2:]:
    out[domain] = {
        "spf": spf.check_spf(domain, resolver=resolver, timeout=2),
        "dmarc": dmarc.check_dmarc(domain, resolver=resolver, timeout=2),
    }
print(json.dumps(out, default=str))
"#;
    let output = std::process::Command::new(venv_python())
        .arg("-c")
        .arg(DRIVER)
        .arg(port.to_string())
        .args(domains)
        .output()
        .expect("run checkdmarc");
    assert!(
        output.status.success(),
        "checkdmarc failed (scripts/install-test-deps.sh installs it): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("checkdmarc JSON")
}

/// The number before `what` in an evidence text ("2 DNS-querying terms").
fn count_before(evidence: &str, what: &str) -> Option<u64> {
    let at = evidence.find(what)?;
    evidence[..at].split_whitespace().last()?.parse().ok()
}

/// Ravelin's SPF and DMARC verdicts against checkdmarc's on the same zones: the same records
/// are valid or invalid (no record, several, syntax errors, too many lookups or void
/// lookups, missing includes, loops), the same DNS-lookup counts for valid SPF records, the
/// same `all` and DMARC policy, the same organisational-domain fallback and the same
/// unauthorised report destinations. One judgement differs on purpose: `+all` is a valid
/// record for checkdmarc and a failed check for Ravelin (it authorises the whole internet);
/// the test asserts both read it as `all` = pass.
#[tokio::test]
async fn checkdmarc_agrees_on_spf_and_dmarc() {
    let w = world();
    let domains = [
        "good.example",
        "sub.good.example",
        "nomx.example",
        "spf-two.example",
        "spf-plusall.example",
        "spf-neutral.example",
        "spf-noall.example",
        "spf-syntax.example",
        "spf-ptr.example",
        "spf-void.example",
        "spf-missing-inc.example",
        "spf-deep.example",
        "spf-redirect.example",
        "spf-loop.example",
        "dmarc-pnone.example",
        "dmarc-weak.example",
        "dmarc-syntax.example",
        "dmarc-two.example",
    ];
    let theirs = checkdmarc(w.dns.addr().port(), &domains);
    for domain in domains {
        let ctx = w.ctx(domain);
        let (spf, dmarc) = tokio::join!(dns::spf::check(&ctx), dns::dmarc::check(&ctx));
        let their_spf = &theirs[domain]["spf"];
        let their_dmarc = &theirs[domain]["dmarc"];
        let context = format!(
            "{domain}:\nours: {spf:#?}\n{dmarc:#?}\ntheirs: {:#}",
            theirs[domain]
        );

        if domain == "spf-plusall.example" {
            assert_eq!(their_spf["parsed"]["all"], "pass", "{context}");
            assert!(
                spf.status == Status::Fail && spf.evidence.contains("+all"),
                "{context}"
            );
        } else {
            let our_valid = spf.status != Status::Fail;
            assert_eq!(
                their_spf["valid"], our_valid,
                "SPF validity differs for {context}"
            );
            if our_valid {
                assert_eq!(
                    their_spf["dns_lookups"].as_u64(),
                    count_before(&spf.evidence, "DNS-querying terms"),
                    "SPF lookup count differs for {context}"
                );
            }
        }

        let our_record_valid = !["no DMARC record", "several DMARC records", "syntax error"]
            .iter()
            .any(|t| dmarc.title.contains(t));
        assert_eq!(
            their_dmarc["valid"], our_record_valid,
            "DMARC validity differs for {context}"
        );
        if our_record_valid {
            let p = their_dmarc["tags"]["p"]["value"]
                .as_str()
                .unwrap_or_default();
            assert!(
                dmarc.evidence.contains(&format!("p={p}")),
                "policy differs: {context}"
            );
            let inherited = their_dmarc["location"] != domain;
            assert_eq!(
                dmarc.evidence.contains("organisational domain"),
                inherited,
                "fallback differs: {context}"
            );
            let their_unauthorised = their_dmarc["warnings"].as_array().is_some_and(|w| {
                w.iter().any(|w| {
                    w.as_str().is_some_and(|w| {
                        w.contains("does not indicate that it accepts DMARC reports")
                    })
                })
            });
            assert_eq!(
                dmarc.evidence.contains("has not authorised the reports"),
                their_unauthorised,
                "report authorisation differs: {context}"
            );
        }
    }
}
