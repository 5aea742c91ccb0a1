//! Real rustls handshakes between the configurations of ravelin-tls, driven in memory: the
//! client's and the server's TLS records are handed to each other until both are done or one
//! fails. No sockets, so every run is deterministic.

use std::path::Path;
use std::sync::Arc;

use ravelin_tls::testing::TestPki;
use ravelin_tls::{
    TlsError, Verify, client_config, describe, self_signed_server_config, server_config,
};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};

/// Moves records between the two ends until neither is handshaking; the first error wins.
fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    name: &str,
) -> Result<(ClientConnection, ServerConnection), rustls::Error> {
    let name = ServerName::try_from(name.to_string()).expect("test server name");
    let mut c = ClientConnection::new(client, name)?;
    let mut s = ServerConnection::new(server)?;
    for _ in 0..20 {
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok((c, s));
        }
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("write to Vec");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("read from slice");
            s.process_new_packets()?;
        }
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("write to Vec");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("read from slice");
            c.process_new_packets()?;
        }
    }
    panic!("handshake did not finish in 20 rounds");
}

fn pki_files(pki: &TestPki, dir: &Path) -> ravelin_tls::testing::TestPkiFiles {
    pki.write_to(dir).expect("write test PKI")
}

#[test]
fn self_signed_server_and_encrypt_only_client() {
    let server = self_signed_server_config("mx.example.test").unwrap();
    let client = client_config(&Verify::None).unwrap();
    // The name the client asks for does not matter when nothing is verified.
    let (c, s) = handshake(client, server, "other.example.test").unwrap();
    let text = describe(&c);
    assert!(text.starts_with("TLSv1.3 with cipher TLS13_"), "{text}");
    assert_eq!(text, describe(&s));
}

#[test]
fn webpki_with_the_test_ca_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let files = pki_files(&TestPki::new("mx.example.test").unwrap(), dir.path());
    let server = server_config(&files.cert, &files.key).unwrap();
    let client = client_config(&Verify::WebPki {
        ca_file: Some(files.ca.clone()),
    })
    .unwrap();
    handshake(client, server, "mx.example.test").unwrap();
}

#[test]
fn webpki_with_a_wrong_ca_fails() {
    let dir = tempfile::tempdir().unwrap();
    let files = pki_files(&TestPki::new("mx.example.test").unwrap(), dir.path());
    let other = tempfile::tempdir().unwrap();
    let other_files = pki_files(&TestPki::new("mx.example.test").unwrap(), other.path());
    let server = server_config(&files.cert, &files.key).unwrap();
    let client = client_config(&Verify::WebPki {
        ca_file: Some(other_files.ca),
    })
    .unwrap();
    let err = handshake(client, server, "mx.example.test").unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{err:?}"
    );
}

#[test]
fn webpki_checks_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let files = pki_files(&TestPki::new("mx.example.test").unwrap(), dir.path());
    let server = server_config(&files.cert, &files.key).unwrap();
    let client = client_config(&Verify::WebPki {
        ca_file: Some(files.ca.clone()),
    })
    .unwrap();
    let err = handshake(client, server, "mail.example.test").unwrap_err();
    assert!(
        matches!(err, rustls::Error::InvalidCertificate(_)),
        "{err:?}"
    );
}

#[test]
fn webpki_refuses_a_self_signed_server() {
    let dir = tempfile::tempdir().unwrap();
    let files = pki_files(&TestPki::new("mx.example.test").unwrap(), dir.path());
    let server = self_signed_server_config("mx.example.test").unwrap();
    let client = client_config(&Verify::WebPki {
        ca_file: Some(files.ca),
    })
    .unwrap();
    assert!(handshake(client, server, "mx.example.test").is_err());
}

#[test]
fn a_tls12_only_client_connects_and_versions_are_12_and_13_only() {
    let versions: Vec<_> = ravelin_tls::PROTOCOL_VERSIONS
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(
        versions,
        vec![
            rustls::ProtocolVersion::TLSv1_3,
            rustls::ProtocolVersion::TLSv1_2
        ]
    );

    // A TLS 1.2-only client that trusts the test CA, against our server configuration.
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new("mx.example.test").unwrap();
    let files = pki_files(&pki, dir.path());
    let server = server_config(&files.cert, &files.key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from_pem_slice(pki.ca_pem.as_bytes()).unwrap())
        .unwrap();
    let only12 = ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let (c, _s) = handshake(Arc::new(only12), server, "mx.example.test").unwrap();
    assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    let text = describe(&c);
    assert!(text.starts_with("TLSv1.2 with cipher TLS_ECDHE_"), "{text}");
}

#[test]
fn encrypt_only_still_checks_the_handshake_signature() {
    // A server that presents one certificate but signs with another key: chain and name checks
    // are off in Verify::None, the signature check must still refuse it.
    let presented = TestPki::new("mx.example.test").unwrap();
    let signing = TestPki::new("mx.example.test").unwrap();
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let cert =
        rustls::pki_types::CertificateDer::from_pem_slice(presented.cert_pem.as_bytes()).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(signing.key_pem.as_bytes()).unwrap();
    let signer = provider.key_provider.load_private_key(key).unwrap();
    let certified = rustls::sign::CertifiedKey::new(vec![cert], signer);
    let server = ServerConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(ravelin_tls::PROTOCOL_VERSIONS)
        .unwrap()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
    let client = client_config(&Verify::None).unwrap();
    let err = handshake(client, Arc::new(server), "mx.example.test").unwrap_err();
    assert!(
        matches!(
            err,
            rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
        ),
        "{err:?}"
    );
}

use rustls::pki_types::pem::PemObject;

#[test]
fn server_config_names_the_bad_file() {
    let dir = tempfile::tempdir().unwrap();
    let files = pki_files(&TestPki::new("mx.example.test").unwrap(), dir.path());

    let missing = dir.path().join("missing.pem");
    let err = server_config(&missing, &files.key).unwrap_err();
    assert!(
        matches!(&err, TlsError::File { path, .. } if path == &missing),
        "{err}"
    );
    assert!(err.to_string().contains("cannot open"), "{err}");

    // A key file given as the certificate: no certificate in it.
    let err = server_config(&files.key, &files.key).unwrap_err();
    assert!(
        matches!(&err, TlsError::File { path, .. } if path == &files.key),
        "{err}"
    );
    assert!(err.to_string().contains("no certificate in file"), "{err}");

    // A certificate given as the key: no key in it.
    let err = server_config(&files.cert, &files.cert).unwrap_err();
    assert!(err.to_string().contains("no private key in file"), "{err}");

    // The key of another certificate.
    let other = tempfile::tempdir().unwrap();
    let other_files = pki_files(&TestPki::new("mx.example.test").unwrap(), other.path());
    let err = server_config(&files.cert, &other_files.key).unwrap_err();
    assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err}");
    assert!(err.to_string().contains("does not match"), "{err}");

    // Not PEM at all, and too large.
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, "-----BEGIN CERTIFICATE-----\n!!!!\n").unwrap();
    assert!(server_config(&junk, &files.key).is_err());
    let big = dir.path().join("big.pem");
    std::fs::write(&big, vec![b'a'; (ravelin_tls::MAX_PEM_BYTES + 1) as usize]).unwrap();
    let err = server_config(&big, &files.key).unwrap_err();
    assert!(err.to_string().contains("larger than"), "{err}");
}

#[test]
fn a_ca_file_without_certificates_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    let err = client_config(&Verify::WebPki {
        ca_file: Some(empty),
    })
    .unwrap_err();
    assert!(err.to_string().contains("no certificate in file"), "{err}");
}

/// A reload presents the new certificate from the next handshake on; a session already made
/// keeps the one it got; a reload from unusable files fails, names the file, and leaves the
/// certificate in use.
#[test]
fn a_reloaded_certificate_serves_the_next_handshake() {
    use ravelin_tls::{ServerCertificate, reloadable_server_config};
    let dir = tempfile::tempdir().unwrap();
    let first = TestPki::new("mx.example.test").unwrap();
    let files = pki_files(&first, dir.path());
    let certificate = Arc::new(ServerCertificate::load(&files.cert, &files.key).unwrap());
    let server = reloadable_server_config(certificate.clone()).unwrap();
    let trusting = |ca: &Path| {
        client_config(&Verify::WebPki {
            ca_file: Some(ca.to_path_buf()),
        })
        .unwrap()
    };
    let before = certificate.summary();
    assert_eq!(before.subject, "CN=mx.example.test");
    assert_eq!(before.chain, 1);
    assert!(before.seconds_left().is_some_and(|s| s > 0), "{before:?}");
    let (old_session, _) =
        handshake(trusting(&files.ca), server.clone(), "mx.example.test").unwrap();

    // Renewal: a certificate of another CA replaces the files.
    let renewed_dir = dir.path().join("renewed");
    std::fs::create_dir(&renewed_dir).unwrap();
    let renewed = pki_files(&TestPki::new("mx.example.test").unwrap(), &renewed_dir);
    std::fs::copy(&renewed.cert, &files.cert).unwrap();
    std::fs::copy(&renewed.key, &files.key).unwrap();
    certificate.reload().unwrap();
    handshake(trusting(&renewed.ca), server.clone(), "mx.example.test")
        .expect("the renewed certificate is served");
    assert!(
        handshake(trusting(&files.ca), server.clone(), "mx.example.test").is_err(),
        "the old certificate is no longer served"
    );
    let old_chain = old_session.peer_certificates().unwrap();
    use rustls::pki_types::pem::PemObject;
    let first_der =
        rustls::pki_types::CertificateDer::from_pem_slice(first.cert_pem.as_bytes()).unwrap();
    assert_eq!(
        old_chain[0], first_der,
        "the session made before the reload keeps its certificate"
    );

    // A half-written renewal (key of another certificate): refused, the renewed one stays.
    let stray_dir = dir.path().join("stray");
    std::fs::create_dir(&stray_dir).unwrap();
    let stray = pki_files(&TestPki::new("mx.example.test").unwrap(), &stray_dir);
    std::fs::copy(&stray.key, &files.key).unwrap();
    let refused = certificate.reload().unwrap_err();
    assert!(matches!(refused, TlsError::KeyMismatch { .. }), "{refused}");
    std::fs::write(&files.cert, "not a certificate").unwrap();
    let refused = certificate.reload().unwrap_err().to_string();
    assert!(
        refused.contains(&files.cert.display().to_string()),
        "{refused}"
    );
    handshake(trusting(&renewed.ca), server, "mx.example.test")
        .expect("a failed reload keeps the certificate in use");
}

/// The summary's expiry is the chain's: an intermediate that expires before the leaf gives
/// the date and is named; a chain whose leaf expires first names nobody else.
#[test]
fn the_chain_certificate_that_expires_first_sets_the_expiry() {
    use ravelin_tls::ServerCertificate;
    let dir = tempfile::tempdir().unwrap();
    let leaf = TestPki::expiring_in("mx.example.test", 300).unwrap();
    // A second certificate of the chain, valid 20 more days, stands for an intermediate.
    let intermediate = TestPki::expiring_in("intermediate.example.test", 20).unwrap();
    let files = pki_files(&leaf, dir.path());
    std::fs::write(
        &files.cert,
        format!("{}{}", leaf.cert_pem, intermediate.cert_pem),
    )
    .unwrap();
    let summary = ServerCertificate::load(&files.cert, &files.key)
        .unwrap()
        .summary();
    assert_eq!(summary.subject, "CN=mx.example.test");
    assert_eq!(summary.chain, 2);
    assert_eq!(
        summary.first_to_expire.as_deref(),
        Some("CN=intermediate.example.test")
    );
    let days = summary.seconds_left().unwrap().div_euclid(86_400);
    assert!((19..=20).contains(&days), "{days} days: {summary:?}");

    // The other way round: the leaf expires first.
    std::fs::write(
        &files.cert,
        format!(
            "{}{}",
            leaf.cert_pem,
            TestPki::expiring_in("intermediate.example.test", 900)
                .unwrap()
                .cert_pem
        ),
    )
    .unwrap();
    let summary = ServerCertificate::load(&files.cert, &files.key)
        .unwrap()
        .summary();
    assert_eq!(summary.first_to_expire, None);
    let days = summary.seconds_left().unwrap().div_euclid(86_400);
    assert!((299..=300).contains(&days), "{days} days: {summary:?}");
}
