//! Any text inside `<...>` of MAIL FROM and RCPT TO: the path parsers never panic, and a path
//! they accept prints (as the gateway writes it into the spool and to the next hop) into a
//! path that parses back to the same local part and domain, unless printing made it too long.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ravelin_wire::address::{
    ForwardPath, MAX_PATH, ReversePath, parse_domain, parse_forward_path, parse_reverse_path,
    split_bracketed,
};

fn reparse_forward(p: &ForwardPath) {
    let printed = p.to_string();
    if printed.len() + 2 > MAX_PATH {
        return;
    }
    let again = parse_forward_path(&printed).unwrap_or_else(|e| panic!("{printed:?}: {e}"));
    match (p, &again) {
        (ForwardPath::Path(a), ForwardPath::Path(b)) => {
            assert_eq!(a.mailbox.local, b.mailbox.local, "{printed:?}");
            assert_eq!(a.mailbox.domain, b.mailbox.domain, "{printed:?}");
            assert!(b.route.is_empty(), "{printed:?}");
        }
        (ForwardPath::Unqualified(a), ForwardPath::Unqualified(b)) => assert_eq!(a, b),
        _ => panic!("{printed:?} changed kind: {p:?} -> {again:?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(ForwardPath::Path(p)) = parse_forward_path(text) {
        assert!(text.len() + 2 <= MAX_PATH);
        reparse_forward(&ForwardPath::Path(p));
    } else if let Ok(p) = parse_forward_path(text) {
        reparse_forward(&p);
    }
    if let Ok(ReversePath::Path(p)) = parse_reverse_path(text) {
        let printed = p.mailbox.to_string();
        if printed.len() + 2 <= MAX_PATH {
            match parse_reverse_path(&printed) {
                Ok(ReversePath::Path(q)) => {
                    assert_eq!(p.mailbox.local, q.mailbox.local, "{printed:?}");
                    assert_eq!(p.mailbox.domain, q.mailbox.domain, "{printed:?}");
                }
                other => panic!("{printed:?} -> {other:?}"),
            }
        }
    }
    if let Ok(d) = parse_domain(text) {
        assert_eq!(parse_domain(&d.to_string()), Ok(d));
    }
    // The bracket splitter on the same text as a command argument: what it returns is a
    // part of the input, and the path inside is within the length limit.
    if let Ok((inner, rest)) = split_bracketed(text) {
        assert!(inner.len() + 2 <= MAX_PATH);
        assert!(text.ends_with(rest));
    }
});
