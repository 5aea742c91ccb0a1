//! The "Audit check coverage" table of docs/TESTING.md enforces itself:
//!
//! - every id of `ravelin_audit::check_ids()` has exactly one row, and every row's id is
//!   registered;
//! - every cell names at least one test as `` `FILE::TEST` `` (FILE from the repository root),
//!   or says `none —` with a reason; every FILE exists, defines `fn TEST(` and mentions the id
//!   (smuggling sequences: `smtp.smuggling`);
//! - the Postfix linter, run on the hardened, weak and legacy fixture configurations, passes
//!   every id it reports on the hardened one and fails or warns on it in a weak or legacy one
//!   (except the ids that are only ever information), and reports only registered ids.
//!
//! Why the table rather than one good-world / bad-world test for every id: docs/TESTING.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ravelin_audit::local::lint_postfix_config;
use ravelin_audit::{Finding, Status};

const SECTION: &str = "## Audit check coverage";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One row of the table: the id and its two cells, with the line number for messages.
struct Row {
    line: usize,
    id: String,
    passing: String,
    failing: String,
}

/// The rows of the coverage table (lines starting with "| `" inside the section).
fn rows() -> Vec<Row> {
    let path = repo_root().join("docs/TESTING.md");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let start = text
        .lines()
        .position(|l| l.trim() == SECTION)
        .unwrap_or_else(|| panic!("docs/TESTING.md has no \"{SECTION}\" section"));
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate().skip(start + 1) {
        if line.starts_with("## ") {
            break;
        }
        let Some(rest) = line.strip_prefix("| `") else {
            continue;
        };
        let cells: Vec<&str> = rest.split(" | ").collect();
        assert_eq!(
            cells.len(),
            3,
            "docs/TESTING.md:{}: a row is | `id` | passing | failing |",
            i + 1
        );
        let id = cells[0].trim_end_matches('`').to_string();
        rows.push(Row {
            line: i + 1,
            id,
            passing: cells[1].trim().to_string(),
            failing: cells[2].trim_end_matches('|').trim().to_string(),
        });
    }
    assert!(!rows.is_empty(), "the coverage table has no rows");
    rows
}

/// The `FILE::TEST` references of a cell.
fn references(cell: &str) -> Vec<(String, String)> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter_map(|quoted| {
            let (file, test) = quoted.rsplit_once("::")?;
            file.ends_with(".rs")
                .then(|| (file.to_string(), test.to_string()))
        })
        .collect()
}

/// The problems of one cell about `id` (empty when it is sound).
fn cell_problems(id: &str, cell: &str, files: &mut BTreeMap<String, String>) -> Vec<String> {
    let refs = references(cell);
    if refs.is_empty() {
        let reason = cell.strip_prefix("none —").map(str::trim).unwrap_or("");
        if reason.split_whitespace().count() < 4 {
            return vec![format!(
                "names no `FILE::TEST` and gives no reason (\"none — why\"): {cell:?}"
            )];
        }
        return Vec::new();
    }
    let mention = if id.starts_with("smtp.smuggling.") {
        "smtp.smuggling".to_string()
    } else {
        format!("\"{id}\"")
    };
    let mut problems = Vec::new();
    for (file, test) in refs {
        let text = files.entry(file.clone()).or_insert_with(|| {
            std::fs::read_to_string(repo_root().join(&file)).unwrap_or_default()
        });
        if text.is_empty() {
            problems.push(format!("{file} does not exist"));
            continue;
        }
        if !text.contains(&format!("fn {test}(")) {
            problems.push(format!("{file} defines no fn {test}"));
        }
        if !text.contains(&mention) {
            problems.push(format!("{file} never mentions {mention}"));
        }
    }
    problems
}

#[test]
fn every_registered_check_is_in_the_coverage_table_with_tests_both_ways() {
    let registered: BTreeSet<String> = ravelin_audit::check_ids().into_iter().collect();
    let rows = rows();
    let mut problems = Vec::new();
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    let mut files = BTreeMap::new();
    for row in &rows {
        if let Some(first) = seen.insert(&row.id, row.line) {
            problems.push(format!(
                "line {}: {} has a row already at line {first}",
                row.line, row.id
            ));
        }
        if !registered.contains(&row.id) {
            problems.push(format!(
                "line {}: {} is in no registry (renamed or removed?)",
                row.line, row.id
            ));
        }
        for (side, cell) in [("passing", &row.passing), ("failing", &row.failing)] {
            for p in cell_problems(&row.id, cell, &mut files) {
                problems.push(format!("line {}: {} ({side}): {p}", row.line, row.id));
            }
        }
    }
    for id in &registered {
        if !seen.contains_key(id.as_str()) {
            problems.push(format!(
                "{id} is registered but has no row: name the tests that assert it passing and \
                 failing"
            ));
        }
    }
    assert!(
        problems.is_empty(),
        "docs/TESTING.md \"{SECTION}\":\n{}",
        problems.join("\n")
    );
}

/// Linter ids that are only ever information, whatever the configuration.
const INFORMATION_ONLY: &[&str] = &["postfix.inet_interfaces", "postfix.services"];

fn lint_fixture(name: &str) -> Vec<Finding> {
    lint_postfix_config(
        &Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/postfix")
            .join(name),
    )
}

#[test]
fn the_linter_passes_the_hardened_configuration_and_fails_the_weak_ones_on_every_id() {
    let hardened = lint_fixture("hardened");
    let weak: Vec<Finding> = ["weak", "legacy"]
        .iter()
        .flat_map(|name| lint_fixture(name))
        .collect();
    let registered: BTreeSet<String> = ravelin_audit::check_ids().into_iter().collect();
    let ids: BTreeSet<&str> = hardened
        .iter()
        .chain(&weak)
        .map(|f| f.id.as_str())
        .collect();
    let has = |findings: &[Finding], id: &str, statuses: &[Status]| {
        findings
            .iter()
            .any(|f| f.id == id && statuses.contains(&f.status))
    };
    let mut problems = Vec::new();
    for id in &ids {
        if !registered.contains(*id) {
            problems.push(format!("{id} is reported by the linter but in no registry"));
        }
        if INFORMATION_ONLY.contains(id) {
            continue;
        }
        if !has(&hardened, id, &[Status::Pass]) {
            problems.push(format!("{id}: no pass on the hardened configuration"));
        }
        if !has(&weak, id, &[Status::Fail, Status::Warn]) {
            problems.push(format!(
                "{id}: neither failed nor warned on the weak and legacy configurations"
            ));
        }
    }
    // The remote ids the linter shares, each judged here both ways.
    for id in [
        "smtp.open_relay",
        "smtp.smuggling",
        "smtp.vrfy",
        "smtp.auth_before_tls",
        "smtp.banner_disclosure",
        "smtp.size_limit",
        "smtp.pipelining_sync",
        "tls.starttls",
        "tls.versions",
        "tls.ciphers",
        "tls.kex",
        "postfix.mynetworks",
        "postfix.rate_limits",
        "postfix.helo_required",
    ] {
        if !ids.contains(id) {
            problems.push(format!("{id}: the linter no longer reports it"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
