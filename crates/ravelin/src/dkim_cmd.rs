//! `ravelin dkim keygen --domain D --selector S [--algorithm rsa|ed25519] [--output DIR]`:
//! makes a DKIM signing key (RSA 2048 bits by default, or Ed25519), writes it to
//! `DIR/D.S.pem` (PKCS#8 PEM, mode 0600, never over an existing file: a key whose public half
//! is published must not be lost), and prints the DNS TXT record to publish, in zone-file form
//! with the text cut into strings of at most 255 octets, and the `[[dkim.keys]]` entry for the
//! configuration. The gateway reads keys before it gives up root, so the file may stay
//! readable by root only. Fails (exit 1) with the reason: a bad name, an existing file, a
//! directory that cannot be written. The private key is written to the file only.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Subcommand, ValueEnum};
use ravelin_gateway::config::is_domain;
use ravelin_gateway::dkim::{self, KeyAlgorithm};

#[derive(Subcommand)]
pub enum DkimAction {
    /// Make a signing key and print the DNS record to publish.
    Keygen {
        /// The domain of the From addresses to sign (d=).
        #[arg(long)]
        domain: String,
        /// The selector (s=): the record goes to SELECTOR._domainkey.DOMAIN.
        #[arg(long)]
        selector: String,
        #[arg(long, value_enum, default_value = "rsa")]
        algorithm: Algorithm,
        /// Directory for the key file DOMAIN.SELECTOR.pem.
        #[arg(long, default_value = ".")]
        output: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Algorithm {
    /// rsa-sha256 with a 2048-bit key: verified everywhere.
    Rsa,
    /// ed25519-sha256 (RFC 8463): short; sign with an RSA key as well for older verifiers.
    Ed25519,
}

pub fn run(action: DkimAction) -> ExitCode {
    match action {
        DkimAction::Keygen {
            domain,
            selector,
            algorithm,
            output,
        } => match keygen(&domain, &selector, algorithm, output) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("ravelin dkim keygen: {e}");
                ExitCode::from(1)
            }
        },
    }
}

/// Writes the key and returns what to print.
fn keygen(
    domain: &str,
    selector: &str,
    algorithm: Algorithm,
    output: PathBuf,
) -> Result<String, String> {
    let domain = domain.trim_end_matches('.').to_ascii_lowercase();
    if !is_domain(&domain, true) {
        return Err(format!("--domain {domain:?} is not a domain name"));
    }
    if !is_domain(selector, false) {
        return Err(format!(
            "--selector {selector:?} is not a DNS label (letters, digits, hyphens; dots between labels)"
        ));
    }
    let (algorithm, description) = match algorithm {
        Algorithm::Rsa => (KeyAlgorithm::Rsa, "RSA 2048 bits, rsa-sha256"),
        Algorithm::Ed25519 => (KeyAlgorithm::Ed25519, "Ed25519, ed25519-sha256"),
    };
    let key = dkim::generate(algorithm)?;
    let path = output.join(format!("{domain}.{selector}.pem"));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => format!(
                "{} exists; a published key must not be replaced: choose another selector or remove the file",
                path.display()
            ),
            _ => format!("cannot create {}: {e}", path.display()),
        })?;
    file.write_all(key.pem.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;

    let strings: Vec<String> = dkim::txt_strings(&key.record)
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect();
    Ok(format!(
        "Wrote {path} ({description}), readable by its owner only.\n\
         \n\
         Publish this TXT record:\n\
         \n\
         {selector}._domainkey.{domain}. IN TXT ( {strings} )\n\
         \n\
         Then add to the configuration:\n\
         \n\
         [[dkim.keys]]\n\
         domain = \"{domain}\"\n\
         selector = \"{selector}\"\n\
         key_file = {key_file:?}\n",
        path = path.display(),
        key_file = path.display().to_string(),
        strings = strings.join(" "),
    ))
}
