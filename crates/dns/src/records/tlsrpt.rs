//! SMTP TLS reporting records (RFC 8460 §3): the TXT record at `_smtp._tls.DOMAIN`,
//! `v=TLSRPTv1; rua=mailto:reports@example.com,https://reports.example.com/tlsrpt`.
//!
//! The version must come first and be exactly `TLSRPTv1`; `rua` is required and holds one or
//! more `mailto:` or `https:` URIs (others are diagnostics and left out; none left is an
//! error). Other fields are kept as extensions. [`is_tlsrpt_record`] tells which TXT records
//! are TLS-RPT records (RFC 8460 §3: with more than one, none is used).
//!
//! Limits: records longer than [`super::MAX_RECORD_LEN`] are refused; at most
//! [`MAX_RUA`] URIs are kept.

use super::{
    Diagnostic, MAX_RECORD_LEN, RecordError, ReportUri, check_length, report_uris, tag_list,
};

/// The most `rua` URIs kept.
pub const MAX_RUA: usize = 16;

/// A parsed TLS-RPT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptRecord {
    /// Where reports go.
    pub rua: Vec<ReportUri>,
    /// Other fields, as `(name, value)`.
    pub extensions: Vec<(String, String)>,
    /// Problems that left the record usable.
    pub diagnostics: Vec<Diagnostic>,
}

/// True when a TXT record is a TLS-RPT record: it starts with `v=TLSRPTv1` followed by `;`,
/// whitespace or the end.
pub fn is_tlsrpt_record(txt: &str) -> bool {
    txt.strip_prefix("v=TLSRPTv1")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([';', ' ', '\t']))
}

/// Parses a TLS-RPT record.
pub fn parse(text: &str) -> Result<TlsRptRecord, RecordError> {
    check_length(text, MAX_RECORD_LEN, "TLS-RPT record")?;
    let tags = tag_list(text)?;
    match tags.first() {
        Some(first) if first.name == "v" && first.value == "TLSRPTv1" && first.name_at == 0 => {}
        _ => {
            return Err(RecordError::at(
                text,
                0,
                "a TLS-RPT record starts with \"v=TLSRPTv1;\"",
            ));
        }
    }
    let mut diagnostics = Vec::new();
    let mut rua = None;
    let mut extensions = Vec::new();
    for tag in &tags[1..] {
        if tag.name == "rua" {
            let mut uris = report_uris(
                text,
                tag.value,
                tag.value_at,
                "rua",
                false,
                &["mailto", "https"],
                &mut diagnostics,
            );
            if uris.is_empty() {
                return Err(RecordError::at(
                    text,
                    tag.value_at,
                    "rua: no usable mailto: or https: address",
                ));
            }
            if uris.len() > MAX_RUA {
                diagnostics.push(Diagnostic::at(
                    text,
                    tag.value_at,
                    format!("rua: more than {MAX_RUA} addresses; the rest are ignored"),
                ));
                uris.truncate(MAX_RUA);
            }
            rua = Some(uris);
        } else {
            extensions.push((tag.name.to_string(), tag.value.to_string()));
        }
    }
    let Some(rua) = rua else {
        return Err(RecordError::at(
            text,
            0,
            "the required field \"rua\" is missing (write rua=mailto:tlsrpt@your-domain)",
        ));
    };
    Ok(TlsRptRecord {
        rua,
        extensions,
        diagnostics,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_records() {
        let record =
            parse("v=TLSRPTv1; rua=mailto:tls@example.org,https://r.example.net/v1").unwrap();
        assert_eq!(record.rua.len(), 2);
        assert_eq!(record.rua[1].scheme(), "https");
        assert!(record.diagnostics.is_empty());
        let record = parse("v=TLSRPTv1;rua=mailto:a@example.org;x=y;").unwrap();
        assert_eq!(record.extensions, vec![("x".to_string(), "y".to_string())]);
    }

    #[test]
    fn errors_and_diagnostics() {
        for (text, words) in [
            ("v=TLSRPTv2; rua=mailto:a@example.org", "starts with"),
            ("rua=mailto:a@example.org; v=TLSRPTv1", "starts with"),
            ("v=TLSRPTv1", "missing"),
            ("v=TLSRPTv1; rua=ftp://x", "no usable"),
            (
                "v=TLSRPTv1; rua=mailto:a@example.org; rua=mailto:b@example.org",
                "twice",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.message().contains(words), "{text}: {err}");
        }
        let record = parse("v=TLSRPTv1; rua=mailto:a@example.org,http://plain.example/").unwrap();
        assert_eq!(record.rua.len(), 1);
        assert!(record.diagnostics[0].message.contains("http"));
    }

    #[test]
    fn recognition() {
        assert!(is_tlsrpt_record("v=TLSRPTv1; rua=mailto:a@b.example"));
        assert!(is_tlsrpt_record("v=TLSRPTv1"));
        assert!(!is_tlsrpt_record("v=TLSRPTv10"));
        assert!(!is_tlsrpt_record("v=spf1"));
    }
}
