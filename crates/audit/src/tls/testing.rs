//! Certificates with the flaws the certificate checks look for, for tests: short RSA keys,
//! SHA-1 or MD5 signatures, validity in the past or the future, self-signed leaves, names
//! that do not match. [`ravelin_tls::testing`] makes only good ones (rcgen cannot sign with
//! SHA-1 or make a 1024-bit key); these are made with OpenSSL.
//!
//! Nothing here reads input from the network; errors are OpenSSL's.

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
};
use openssl::x509::{X509, X509Builder, X509Name};
use ravelin_tls::testing::{TestPki, TestPkiFiles};

/// The leaf's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeySpec {
    Rsa(u32),
    EcP256,
}

/// The digest the issuer signs the leaf with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Digest {
    Sha256,
    Sha1,
    Md5,
}

/// What the leaf certificate looks like.
#[derive(Clone, Debug)]
pub struct CertSpec {
    /// The DNS name in the subject alternative names (and the CN).
    pub host: String,
    pub key: KeySpec,
    pub digest: Digest,
    /// Validity start, in days from now (negative: in the past).
    pub from_days: i64,
    /// Validity end, in days from now.
    pub until_days: i64,
    /// Signed by its own key instead of the test CA.
    pub self_signed: bool,
}

impl CertSpec {
    /// A sound certificate: RSA 2048, SHA-256, valid from a day ago for a year, CA-issued.
    pub fn good(host: &str) -> CertSpec {
        CertSpec {
            host: host.to_string(),
            key: KeySpec::Rsa(2048),
            digest: Digest::Sha256,
            from_days: -1,
            until_days: 365,
            self_signed: false,
        }
    }
}

/// A CA and a leaf: PEM (as [`TestPki`], which writes them to files) and DER.
#[derive(Clone, Debug)]
pub struct TestCert {
    pub pem: TestPki,
    /// The leaf's DER.
    pub cert_der: Vec<u8>,
    /// The CA's DER.
    pub ca_der: Vec<u8>,
}

fn days_from_now(days: i64) -> Result<Asn1Time, ErrorStack> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    Asn1Time::from_unix(now + days * 86_400)
}

fn name(cn: &str) -> Result<X509Name, ErrorStack> {
    let mut name = X509Name::builder()?;
    name.append_entry_by_nid(Nid::COMMONNAME, cn)?;
    Ok(name.build())
}

fn serial() -> Result<Asn1Integer, ErrorStack> {
    let mut bn = BigNum::new()?;
    bn.rand(64, openssl::bn::MsbOption::MAYBE_ZERO, false)?;
    bn.to_asn1_integer()
}

fn key(spec: KeySpec) -> Result<PKey<Private>, ErrorStack> {
    match spec {
        KeySpec::Rsa(bits) => PKey::from_rsa(Rsa::generate(bits)?),
        KeySpec::EcP256 => {
            let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
            PKey::from_ec_key(EcKey::generate(&group)?)
        }
    }
}

fn builder(
    subject: &X509Name,
    issuer: &X509Name,
    from: &Asn1Time,
    until: &Asn1Time,
    key: &PKey<Private>,
) -> Result<X509Builder, ErrorStack> {
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let serial = serial()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(subject)?;
    b.set_issuer_name(issuer)?;
    b.set_not_before(from)?;
    b.set_not_after(until)?;
    b.set_pubkey(key)?;
    Ok(b)
}

/// Diffie-Hellman parameters of a 1024-bit group (RFC 5114 section 2.1), in PEM, for a
/// server whose DHE key exchange `tls.kex` must fail (Postfix: `smtpd_tls_dh1024_param_file`).
pub fn weak_dh_params_pem() -> Result<String, ErrorStack> {
    let dh = openssl::dh::Dh::get_1024_160()?;
    Ok(String::from_utf8_lossy(&dh.params_to_pem()?).into_owned())
}

impl TestCert {
    /// Makes a CA (RSA 2048, SHA-256, "Ravelin audit test CA") and a leaf as `spec` says.
    pub fn new(spec: &CertSpec) -> Result<TestCert, ErrorStack> {
        let ca_key = key(KeySpec::Rsa(2048))?;
        let ca_name = name("Ravelin audit test CA")?;
        let mut ca = builder(
            &ca_name,
            &ca_name,
            &days_from_now(-30)?,
            &days_from_now(3650)?,
            &ca_key,
        )?;
        ca.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        ca.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
        ca.sign(&ca_key, MessageDigest::sha256())?;
        let ca = ca.build();

        let leaf_key = key(spec.key)?;
        let leaf_name = name(&spec.host)?;
        let issuer = if spec.self_signed {
            &leaf_name
        } else {
            ca.subject_name()
        };
        let issuer = issuer.to_owned()?;
        let mut leaf = builder(
            &leaf_name,
            &issuer,
            &days_from_now(spec.from_days)?,
            &days_from_now(spec.until_days)?,
            &leaf_key,
        )?;
        leaf.append_extension(BasicConstraints::new().build()?)?;
        leaf.append_extension(
            KeyUsage::new()
                .critical()
                .digital_signature()
                .key_encipherment()
                .build()?,
        )?;
        leaf.append_extension(ExtendedKeyUsage::new().server_auth().build()?)?;
        let san = SubjectAlternativeName::new()
            .dns(&spec.host)
            .build(&leaf.x509v3_context(Some(&ca), None))?;
        leaf.append_extension(san)?;
        let digest = match spec.digest {
            Digest::Sha256 => MessageDigest::sha256(),
            Digest::Sha1 => MessageDigest::sha1(),
            Digest::Md5 => MessageDigest::md5(),
        };
        leaf.sign(if spec.self_signed { &leaf_key } else { &ca_key }, digest)?;
        let leaf: X509 = leaf.build();
        let text = |pem: Vec<u8>| String::from_utf8_lossy(&pem).into_owned();
        Ok(TestCert {
            pem: TestPki {
                ca_pem: text(ca.to_pem()?),
                cert_pem: text(leaf.to_pem()?),
                key_pem: text(leaf_key.private_key_to_pem_pkcs8()?),
            },
            cert_der: leaf.to_der()?,
            ca_der: ca.to_der()?,
        })
    }

    /// Writes `ca.pem`, `cert.pem` (the leaf only) and `key.pem` into `dir`.
    pub fn write_to(&self, dir: &Path) -> std::io::Result<TestPkiFiles> {
        self.pem.write_to(dir)
    }
}
