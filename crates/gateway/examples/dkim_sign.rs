//! DKIM signing throughput of the gateway's signer, for bench/dkim-sign.sh.
//!
//!     dkim_sign --key KEY.pem --domain D --selector S --rounds N MESSAGE...
//!
//! Loads the key as the gateway does (`[[dkim.keys]]`), reads every message (CRLF, header and
//! body) into memory, then signs each of them N times exactly as the gateway signs a message
//! entering the spool (header section as stored, the body fed in 64 KiB chunks), and prints one
//! JSON line: messages signed, seconds, messages per second. Exits 1 with a message on a bad
//! argument, an unreadable file or a message the signer leaves unsigned.

use std::path::PathBuf;
use std::time::Instant;

use ravelin_gateway::dkim::{Outcome, Signer, load_key};

fn main() {
    if let Err(e) = run() {
        eprintln!("dkim_sign: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let mut args = std::env::args().skip(1);
    let (mut key, mut domain, mut selector, mut rounds) = (None, None, None, 1usize);
    let mut files = Vec::new();
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--key" => key = Some(PathBuf::from(value()?)),
            "--domain" => domain = Some(value()?),
            "--selector" => selector = Some(value()?),
            "--rounds" => rounds = value()?.parse().map_err(|e| format!("--rounds: {e}"))?,
            _ if a.starts_with("--") => return Err(format!("unknown option {a}")),
            _ => files.push(PathBuf::from(a)),
        }
    }
    let key = load_key(&key.ok_or("--key is required")?)?;
    let mut signer = Signer::default();
    signer.add(
        &domain.ok_or("--domain is required")?,
        &selector.ok_or("--selector is required")?,
        key,
    );
    let messages: Vec<Vec<u8>> = files
        .iter()
        .map(|f| std::fs::read(f).map_err(|e| format!("{}: {e}", f.display())))
        .collect::<Result<_, _>>()?;
    if messages.is_empty() {
        return Err("no message files given".into());
    }
    let parts: Vec<(&[u8], &[u8])> = messages
        .iter()
        .map(|m| {
            let end = m
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(m.len(), |p| p + 4);
            (&m[..end], &m[end..])
        })
        .collect();
    let start = Instant::now();
    let mut signed = 0usize;
    for _ in 0..rounds {
        for (header, body) in &parts {
            let outcome = signer
                .sign(header, &mut |feed: &mut dyn FnMut(&[u8])| {
                    for chunk in body.chunks(64 * 1024) {
                        feed(chunk);
                    }
                    Ok(())
                })
                .map_err(|e| e.to_string())?;
            match outcome {
                Outcome::Signed { .. } => signed += 1,
                Outcome::Unsigned(why) => return Err(format!("left unsigned: {why}")),
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "{{\"messages\": {signed}, \"seconds\": {seconds:.3}, \"per_second\": {:.1}}}",
        signed as f64 / seconds
    );
    Ok(())
}
