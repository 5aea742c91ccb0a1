//! The DNS records Ravelin parses itself (SPF, DMARC, DKIM key, MTA-STS TXT and policy,
//! TLS-RPT), as they come from any name server on the internet: no parser panics, and an
//! MTA-STS record set is selected without panicking whatever its members.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ravelin_dns::records::{dkim, dmarc, mta_sts, spf, tlsrpt};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = spf::is_spf_record(text);
    let _ = spf::parse(text);
    let _ = dmarc::is_dmarc_record(text);
    let _ = dmarc::parse(text);
    let _ = dkim::parse(text);
    let _ = mta_sts::is_sts_record(text);
    let _ = mta_sts::parse_txt(text);
    let _ = mta_sts::parse_policy(text);
    let _ = tlsrpt::is_tlsrpt_record(text);
    let _ = tlsrpt::parse(text);
    let records: Vec<&str> = text.split('\0').collect();
    let _ = mta_sts::select_txt(&records);
});
