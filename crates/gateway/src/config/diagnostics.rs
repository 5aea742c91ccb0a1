//! Configuration errors that name the file, the line and what to write instead.
//!
//! Two sources feed them: the TOML reader and serde (syntax errors, unknown keys, wrong types,
//! bad values: the first one stops reading), and the semantic checks of `validate` (all of them
//! are collected). Both locate the line through the byte spans of the document: [`Locator`]
//! keeps the parsed document with its spans and answers "which line holds this key".
//! Unknown keys and values get the closest valid name as a suggestion.

use std::fmt;
use std::ops::Range;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::values::FIX_SEPARATOR;

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file (or origin name) the configuration came from.
    pub file: String,
    /// The 1-based line; 0 when the problem concerns the whole file (it cannot be read).
    pub line: usize,
    /// What is wrong.
    pub message: String,
    /// What to write instead.
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(
                f,
                "{}: {}{FIX_SEPARATOR}{}",
                self.file, self.message, self.fix
            )
        } else {
            write!(
                f,
                "{}:{}: {}{FIX_SEPARATOR}{}",
                self.file, self.line, self.message, self.fix
            )
        }
    }
}

/// Every problem found in a configuration file, in line order; displayed one per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// One step of a path into the document: a key of a table or an index into an array.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'p> {
    Key(&'p str),
    Index(usize),
}

impl<'p> From<&'p str> for Seg<'p> {
    fn from(k: &'p str) -> Self {
        Seg::Key(k)
    }
}

impl From<usize> for Seg<'_> {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// `toml_path!["listen", 2, "tls"]`: a path into the document for [`Locator`].
macro_rules! toml_path {
    ($($seg:expr),* $(,)?) => { [$($crate::config::diagnostics::Seg::from($seg)),*] };
}
pub(crate) use toml_path;

/// Renders a path the way the file spells it: `listen[2].tls`, `inbound.domains[0]`.
pub fn dotted(path: &[Seg<'_>]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// Where things are in one configuration text.
pub struct Locator<'t> {
    text: &'t str,
    file: String,
    doc: Option<Spanned<DeTable<'t>>>,
}

impl<'t> Locator<'t> {
    pub fn new(text: &'t str, file: &str) -> Self {
        Locator {
            text,
            file: file.to_string(),
            doc: DeTable::parse(text).ok(),
        }
    }

    /// The 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    /// The line of the deepest element of `path` that exists: the key's line for a table entry,
    /// the element's line for an array item, line 1 when not even the first step exists.
    pub fn line(&self, path: &[Seg<'_>]) -> usize {
        let Some(doc) = &self.doc else { return 1 };
        let mut line = 1;
        let mut table: Option<&DeTable<'t>> = Some(doc.get_ref());
        let mut array: Option<&[Spanned<DeValue<'t>>]> = None;
        for seg in path {
            let (start, value) = match (seg, table, array) {
                (Seg::Key(k), Some(t), _) => match t.get_key_value(*k) {
                    Some((key, value)) => (key.span().start, value.get_ref()),
                    None => break,
                },
                (Seg::Index(i), _, Some(a)) => match a.get(*i) {
                    Some(value) => (value.span().start, value.get_ref()),
                    None => break,
                },
                _ => break,
            };
            line = self.line_of(start);
            table = value.as_table();
            array = value.as_array().map(|a| a.as_ref());
        }
        line
    }

    /// Whether every step of `path` exists.
    pub fn has(&self, path: &[Seg<'_>]) -> bool {
        let Some(doc) = &self.doc else { return false };
        let mut value: Option<&DeValue<'t>> = None;
        for seg in path {
            let next = match (seg, value) {
                (Seg::Key(k), None) => doc.get_ref().get(*k),
                (Seg::Key(k), Some(v)) => v.as_table().and_then(|t| t.get(*k)),
                (Seg::Index(i), Some(v)) => v.as_array().and_then(|a| a.get(*i)),
                (Seg::Index(_), None) => None,
            };
            match next {
                Some(n) => value = Some(n.get_ref()),
                None => return false,
            }
        }
        true
    }

    /// The path of the deepest key or value whose key or value span holds `offset`.
    fn path_at(&self, offset: usize) -> Vec<Seg<'_>> {
        let mut path = Vec::new();
        if let Some(doc) = &self.doc {
            descend_table(doc.get_ref(), offset, &mut path);
        }
        path
    }

    /// An error at a line with a message and a fix.
    pub fn error(
        &self,
        line: usize,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line,
            message: message.into(),
            fix: fix.into(),
        }
    }

    /// An error at the line of `path` (see [`Locator::line`]).
    pub fn error_at(
        &self,
        path: &[Seg<'_>],
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        self.error(self.line(path), message, fix)
    }

    /// For a serde error inside an entry (unknown key, wrong type, bad value): the entry's
    /// path as the file spells it (`listen[0].tls`) and the byte ranges of its key and value,
    /// nested entries included. `None` when the error is not inside an entry.
    pub fn entry_of(&self, err: &toml::de::Error) -> Option<(String, Vec<Range<usize>>)> {
        let doc = self.doc.as_ref()?;
        let offset = err.span()?.start;
        let mut path = Vec::new();
        let mut found = None;
        find_entry(doc.get_ref(), offset, &mut path, &mut found);
        let (depth, key, value) = found?;
        let mut ranges = Vec::new();
        entry_ranges(key, value, &mut ranges);
        Some((dotted(&path[..depth]), ranges))
    }

    /// For a "missing field" error: the path of the missing key (`listen[1].address`).
    pub fn missing_key(&self, err: &toml::de::Error) -> Option<String> {
        let raw = err.message();
        if !raw.starts_with("missing field") {
            return None;
        }
        let name = backticked(raw).first().copied().unwrap_or("");
        let mut path = self.path_at(err.span().unwrap_or(0..0).start);
        path.push(Seg::Key(name));
        Some(dotted(&path))
    }

    /// Turns an error of the TOML reader or of serde into a located, explained one.
    pub fn explain_toml(&self, err: &toml::de::Error) -> ConfigError {
        let span = err.span().unwrap_or(0..0);
        let line = self.line_of(span.start);
        let raw = err.message().trim().replace('\n', "; ");
        let path = self.path_at(span.start);
        let (message, fix) = explain(&raw, &path, self.doc.is_some());
        self.error(line, message, fix)
    }
}

/// Whether `text` is syntactically valid TOML.
pub fn is_toml(text: &str) -> bool {
    DeTable::parse(text).is_ok()
}

/// Replaces the bytes in `ranges` with spaces, keeping line breaks (so every line keeps its
/// number). False when nothing changed or the result would not be UTF-8.
pub fn blank(text: &mut String, ranges: &[Range<usize>]) -> bool {
    let mut bytes = std::mem::take(text).into_bytes();
    let mut changed = false;
    for range in ranges {
        for b in bytes.get_mut(range.clone()).into_iter().flatten() {
            if !matches!(*b, b'\n' | b'\r' | b' ') {
                *b = b' ';
                changed = true;
            }
        }
    }
    match String::from_utf8(bytes) {
        Ok(blanked) => {
            *text = blanked;
            changed
        }
        Err(_) => false,
    }
}

/// The deepest table entry whose key or value holds `offset`: its depth in `path`, its key's
/// span and its value.
type Entry<'a, 't> = Option<(usize, Range<usize>, &'a Spanned<DeValue<'t>>)>;

fn find_entry<'a, 't>(
    table: &'a DeTable<'t>,
    offset: usize,
    path: &mut Vec<Seg<'a>>,
    found: &mut Entry<'a, 't>,
) {
    for (key, value) in table.iter() {
        let in_key = contains(&key.span(), offset);
        if !in_key && !contains(&value.span(), offset) && !holds(value.get_ref(), offset) {
            continue;
        }
        path.push(Seg::Key(key.get_ref().as_ref()));
        *found = Some((path.len(), key.span(), value));
        if in_key {
            return;
        }
        match value.get_ref() {
            DeValue::Table(t) => find_entry(t, offset, path, found),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let DeValue::Table(t) = item.get_ref()
                        && (contains(&item.span(), offset) || holds(item.get_ref(), offset))
                    {
                        path.push(Seg::Index(i));
                        find_entry(t, offset, path, found);
                        return;
                    }
                }
            }
            _ => {}
        }
        return;
    }
}

/// The byte ranges of one `key = value` entry: from its key through its value (for a
/// `[section]` header, the header), then every entry nested in it (a section's entries follow
/// its header), and the headers of `[[array]]` items.
fn entry_ranges(key: Range<usize>, value: &Spanned<DeValue<'_>>, out: &mut Vec<Range<usize>>) {
    let span = value.span();
    out.push(key.start.min(span.start)..key.end.max(span.end));
    match value.get_ref() {
        DeValue::Table(t) => {
            for (k, v) in t.iter() {
                entry_ranges(k.span(), v, out);
            }
        }
        DeValue::Array(items) => {
            for item in items.iter() {
                out.push(item.span());
                if let DeValue::Table(t) = item.get_ref() {
                    for (k, v) in t.iter() {
                        entry_ranges(k.span(), v, out);
                    }
                }
            }
        }
        _ => {}
    }
}

fn contains(span: &Range<usize>, offset: usize) -> bool {
    span.start <= offset && offset < span.end.max(span.start + 1)
}

fn descend_table<'t>(table: &'t DeTable<'_>, offset: usize, path: &mut Vec<Seg<'t>>) {
    for (key, value) in table.iter() {
        if contains(&key.span(), offset) {
            path.push(Seg::Key(key.get_ref().as_ref()));
            return;
        }
        if contains(&value.span(), offset) || holds(value.get_ref(), offset) {
            path.push(Seg::Key(key.get_ref().as_ref()));
            descend_value(value.get_ref(), offset, path);
            return;
        }
    }
}

fn descend_value<'t>(value: &'t DeValue<'_>, offset: usize, path: &mut Vec<Seg<'t>>) {
    match value {
        DeValue::Table(t) => descend_table(t, offset, path),
        DeValue::Array(a) => {
            for (i, item) in a.iter().enumerate() {
                if contains(&item.span(), offset) || holds(item.get_ref(), offset) {
                    path.push(Seg::Index(i));
                    descend_value(item.get_ref(), offset, path);
                    return;
                }
            }
        }
        _ => {}
    }
}

/// Whether any key or value inside `value` spans `offset` (tables of `[section]` headers span
/// only the header, so their entries are searched one by one).
fn holds(value: &DeValue<'_>, offset: usize) -> bool {
    match value {
        DeValue::Table(t) => t.iter().any(|(k, v)| {
            contains(&k.span(), offset) || contains(&v.span(), offset) || holds(v.get_ref(), offset)
        }),
        DeValue::Array(a) => a
            .iter()
            .any(|v| contains(&v.span(), offset) || holds(v.get_ref(), offset)),
        _ => false,
    }
}

/// The names quoted in backticks in a serde message, in order.
fn backticked(message: &str) -> Vec<&str> {
    message.split('`').skip(1).step_by(2).collect()
}

/// Where an unknown key was found, for the message: `in [inbound]`, `in [[listen]]`.
fn section_name(parent: &[Seg<'_>]) -> String {
    match parent {
        [] => "at the top level".to_string(),
        [Seg::Key(k), Seg::Index(_)] => format!("in [[{k}]]"),
        _ => format!("in [{}]", dotted(parent)),
    }
}

/// Message and fix for one error of the reader or of serde.
fn explain(raw: &str, path: &[Seg<'_>], parsed: bool) -> (String, String) {
    let names = backticked(raw);
    if raw == "duplicate key" {
        let message = match path {
            [] => "this key is set twice".to_string(),
            _ => format!("{}: this key is set twice", dotted(path)),
        };
        return (message, "keep one of the two lines".to_string());
    }
    if !parsed {
        return (
            format!("TOML syntax error: {raw}"),
            "correct the syntax of this line (strings in double quotes, [section] headers, \
             key = value)"
                .to_string(),
        );
    }
    if raw.starts_with("unknown field") {
        let unknown = names.first().copied().unwrap_or("");
        let valid = &names[names.len().min(1)..];
        let parent = path.get(..path.len().saturating_sub(1)).unwrap_or(&[]);
        return (
            format!("unknown key \"{unknown}\" {}", section_name(parent)),
            suggest(unknown, valid, "keys"),
        );
    }
    if raw.starts_with("unknown variant") {
        let unknown = names.first().copied().unwrap_or("");
        let valid = &names[names.len().min(1)..];
        return (
            format!("{}: unknown value \"{unknown}\"", dotted(path)),
            suggest(unknown, valid, "values"),
        );
    }
    if raw.starts_with("missing field") {
        let missing = names.first().copied().unwrap_or("");
        let full: Vec<Seg<'_>> = path.iter().copied().chain([Seg::Key(missing)]).collect();
        let where_ = section_name(path);
        return (
            format!("required key \"{missing}\" is missing {where_}"),
            format!(
                "add {} = ... (see the example configuration)",
                dotted(&full)
            ),
        );
    }
    let place = match path {
        [] => String::new(),
        _ => format!("{}: ", dotted(path)),
    };
    if let Some((message, fix)) = raw.split_once(FIX_SEPARATOR) {
        return (format!("{place}{message}"), fix.to_string());
    }
    if let Some((_, expected)) = raw.split_once(", expected ") {
        return (format!("{place}{raw}"), write_as(expected));
    }
    if raw.contains("socket address") {
        return (format!("{place}{raw}"), write_as("socket address"));
    }
    (
        format!("{place}{raw}"),
        "see the example configuration for the valid form".to_string(),
    )
}

/// The fix for a value of the wrong type, from serde's "expected ..." text.
fn write_as(expected: &str) -> String {
    let how = match expected {
        "u8" | "u16" | "u32" | "u64" | "usize" | "i8" | "i16" | "i32" | "i64" | "isize" => {
            "a whole number without quotes, e.g. 100"
        }
        "a boolean" => "true or false, without quotes",
        "a string" => "a string in double quotes",
        "a sequence" => "a list in brackets, e.g. [\"a\", \"b\"]",
        "socket address" => {
            "an address and a port in double quotes, e.g. \"127.0.0.1:25\" or \"[::1]:25\""
        }
        other => other,
    };
    format!("write {how}")
}

/// `did you mean "domains"? valid keys: domains, backend` or, with nothing close,
/// `remove it; valid keys: ...`.
fn suggest(unknown: &str, valid: &[&str], what: &str) -> String {
    let list = if valid.is_empty() {
        format!("this section has no {what}")
    } else {
        format!("valid {what}: {}", valid.join(", "))
    };
    let limit = (unknown.chars().count() / 3).max(2);
    let best = valid
        .iter()
        .map(|v| (edit_distance(&unknown.to_ascii_lowercase(), v), *v))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d);
    match best {
        Some((_, name)) => format!("did you mean \"{name}\"? {list}"),
        None => format!("remove it or correct it; {list}"),
    }
}

/// Levenshtein distance between two short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("domain", "domains"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn suggestions() {
        let fix = suggest("domain", &["domains", "backend"], "keys");
        assert_eq!(
            fix,
            "did you mean \"domains\"? valid keys: domains, backend"
        );
        let fix = suggest("colour", &["domains", "backend"], "keys");
        assert!(fix.starts_with("remove it"), "{fix}");
    }

    #[test]
    fn locator_lines() {
        let text = "hostname = \"a.b\"\n\n[[listen]]\nname = \"x\"\n\n[[listen]]\nname = \"y\"\nkind = \"relay\"\n";
        let loc = Locator::new(text, "t.toml");
        assert_eq!(loc.line(&toml_path!["hostname"]), 1);
        assert_eq!(loc.line(&toml_path!["listen", 0]), 3);
        assert_eq!(loc.line(&toml_path!["listen", 1, "kind"]), 8);
        // A missing key falls back to its table's line.
        assert_eq!(loc.line(&toml_path!["listen", 0, "kind"]), 3);
        assert!(loc.has(&toml_path!["listen", 1, "kind"]));
        assert!(!loc.has(&toml_path!["listen", 0, "kind"]));
        assert_eq!(loc.line(&toml_path!["nothing"]), 1);
    }
}
