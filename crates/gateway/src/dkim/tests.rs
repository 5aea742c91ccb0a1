//! Key loading, records, the signed field list and the choice of domain. That the signatures
//! verify is proven against dkimpy in crates/ravelin/tests/dkim.rs.

use std::path::PathBuf;

use super::*;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dkim")
        .join(name)
}

fn header(text: &str) -> Vec<u8> {
    text.replace('\n', "\r\n").into_bytes()
}

#[test]
fn generated_keys_load_and_publish_their_public_half() {
    for (algorithm, bits, prefix) in [
        (
            KeyAlgorithm::Rsa,
            2048,
            "v=DKIM1; k=rsa; p=MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA",
        ),
        (KeyAlgorithm::Ed25519, 256, "v=DKIM1; k=ed25519; p="),
    ] {
        let generated = generate(algorithm).unwrap();
        assert!(generated.pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let loaded = parse_key(generated.pem.as_bytes()).unwrap();
        assert_eq!(loaded.algorithm, algorithm);
        assert_eq!(loaded.bits, bits);
        assert_eq!(loaded.dns_record(), generated.record);
        assert!(generated.record.starts_with(prefix), "{}", generated.record);
        // The private key appears nowhere but in the PEM.
        assert!(!format!("{loaded:?}").contains("BEGIN"));
    }
    let ed = generate(KeyAlgorithm::Ed25519).unwrap().record;
    // 32 octets of key: 44 base64 characters.
    assert_eq!(ed.len(), "v=DKIM1; k=ed25519; p=".len() + 44);
}

#[test]
fn key_files_of_other_tools_and_bad_ones() {
    let ed = load_key(&fixture("ed25519-openssl.pem")).unwrap();
    assert_eq!(ed.algorithm, KeyAlgorithm::Ed25519);
    let small = load_key(&fixture("rsa1024-too-small.pem")).unwrap_err();
    assert!(small.contains("RSA key of fewer than 2048 bits"), "{small}");
    let ec = load_key(&fixture("ec-p256.pem")).unwrap_err();
    assert!(ec.contains("RSA or Ed25519"), "{ec}");
    let missing = load_key(&fixture("absent.pem")).unwrap_err();
    assert!(missing.contains("absent.pem"), "{missing}");
    let not_pem = load_key(&fixture("README.md")).unwrap_err();
    assert!(not_pem.contains("no PEM private key"), "{not_pem}");
}

#[test]
fn txt_strings_are_at_most_255_octets() {
    let record = "x".repeat(600);
    let parts = txt_strings(&record);
    assert_eq!(
        parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
        [255, 255, 90]
    );
    assert_eq!(parts.concat(), record);
    assert_eq!(txt_strings("short"), ["short"]);
}

#[test]
fn field_list_oversigns_and_signs_what_is_present() {
    let h = header("From: a@example.org\nSubject: s\nCc: c@example.net\nX-Other: 1\n\n");
    let block = parse_stored(&h).unwrap();
    assert_eq!(
        field_list(&block),
        ["From", "From", "Subject", "Subject", "Date", "To", "Cc"]
    );
}

#[test]
fn the_signing_domain_comes_from_from() {
    let mut signer = Signer::default();
    signer.add(
        "example.org",
        "s1",
        parse_key(generate(KeyAlgorithm::Ed25519).unwrap().pem.as_bytes()).unwrap(),
    );
    let domain = |text: &str| signer.signing_domain(&header(text));
    assert_eq!(
        domain("From: Alice <alice@Example.ORG>\n\n"),
        Ok("example.org".into())
    );
    assert_eq!(
        domain("From: \"x@evil.example\" <a@news.example.org>\n\n"),
        Ok("example.org".into())
    );
    assert_eq!(
        domain("From: a@example.org, b@example.org\n\n"),
        Ok("example.org".into())
    );
    assert_eq!(
        domain("From: a@other.example\n\n"),
        Err("no key for other.example".into())
    );
    assert_eq!(
        domain("From: a@example.org, b@evil.example\n\n"),
        Err("From names addresses in different domains".into())
    );
    assert_eq!(
        domain("Subject: none\n\n"),
        Err("not exactly one From field".into())
    );
    assert_eq!(
        domain("From: a@example.org\nFrom: b@example.org\n\n"),
        Err("not exactly one From field".into())
    );
    assert_eq!(
        domain("From: undisclosed-recipients:;\n\n"),
        Err("no address in From".into())
    );
    assert_eq!(
        domain("From: nobody\n\n"),
        Err("an address in From without a domain".into())
    );
}

#[test]
fn signatures_name_the_key_and_the_canonicalisation() {
    let mut signer = Signer::default();
    for (selector, alg) in [("rsa", KeyAlgorithm::Rsa), ("ed", KeyAlgorithm::Ed25519)] {
        signer.add(
            "example.org",
            selector,
            parse_key(generate(alg).unwrap().pem.as_bytes()).unwrap(),
        );
    }
    let h = header(
        "From: a@example.org\nTo: b@example.net\nSubject: s\nDate: Mon, 23 Nov 2026 17:40:00 +0000\n\n",
    );
    let outcome = signer
        .sign(&h, &mut |feed| {
            feed(b"body\r\n");
            Ok(())
        })
        .unwrap();
    let Outcome::Signed {
        fields,
        domain,
        selectors,
    } = outcome
    else {
        panic!("not signed: {outcome:?}");
    };
    assert_eq!(domain, "example.org");
    assert_eq!(selectors, ["rsa", "ed"]);
    let text = String::from_utf8(fields).unwrap();
    let signatures: Vec<&str> = text
        .split("DKIM-Signature: ")
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(signatures.len(), 2, "{text}");
    assert!(
        signatures[0].starts_with("v=1; a=rsa-sha256; s=rsa; d=example.org; c=relaxed/simple;"),
        "{text}"
    );
    assert!(
        signatures[1].starts_with("v=1; a=ed25519-sha256; s=ed; d=example.org; c=relaxed/simple;"),
        "{text}"
    );
    let unfolded = text.replace("\r\n\t", " ");
    assert!(
        unfolded.contains("h=Date:Subject:To:From:From:Subject:Date:To;"),
        "{unfolded}"
    );
    assert!(!unfolded.contains(" l="), "{unfolded}");
    // The parsed header stays a header after the signatures are put on top.
    let mut stored = text.into_bytes();
    stored.extend_from_slice(&h);
    assert_eq!(
        parse_stored(&stored).unwrap().all("DKIM-Signature").count(),
        2
    );
}
