//! The documentation's relative links lead somewhere: every `[text](path#anchor)` in README.md
//! and docs/*.md names a file of the repository and, for a markdown file, a heading in it.
//! Sections move between pages; this catches a link left pointing at the old place.
//!
//! Anchors follow GitHub's rule for heading ids: lower case, characters other than letters,
//! digits, spaces, `-` and `_` removed, spaces turned into `-`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The text outside fenced code blocks, where links and headings are not links and headings.
/// Each with its line number.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fenced = false;
    text.lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .filter(|(_, l)| {
            if l.starts_with("```") {
                fenced = !fenced;
                return false;
            }
            !fenced
        })
        .collect()
}

fn anchors(path: &Path) -> HashSet<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    prose(&text)
        .into_iter()
        .filter_map(|(_, l)| {
            let rest = l.trim_start_matches('#');
            (rest.len() < l.len() && rest.starts_with(' ')).then(|| slug(rest))
        })
        .collect()
}

/// Targets of inline links `](target)` on one line.
fn targets(line: &str) -> Vec<&str> {
    line.match_indices("](")
        .filter_map(|(i, _)| {
            let rest = &line[i + 2..];
            rest.find(')').map(|end| &rest[..end])
        })
        .filter(|t| !t.is_empty() && !t.contains(' '))
        .collect()
}

#[test]
fn relative_links_in_the_documentation_resolve() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/ exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    assert!(docs.len() >= 5, "docs/ has its pages: {docs:?}");
    pages.extend(docs);

    let mut broken = Vec::new();
    let mut checked = 0;
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("readable page");
        for (n, line) in prose(&text) {
            for t in targets(line) {
                if t.contains("://") || t.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (file, anchor) = t.split_once('#').unwrap_or((t, ""));
                let target = if file.is_empty() {
                    page.clone()
                } else {
                    page.parent().expect("page in a directory").join(file)
                };
                let name = page.strip_prefix(&root).unwrap_or(page).display();
                if !target.exists() {
                    broken.push(format!("{name}: line {n}: no file {t}"));
                } else if !anchor.is_empty()
                    && target.extension().is_some_and(|e| e == "md")
                    && !anchors(&target).contains(anchor)
                {
                    broken.push(format!("{name}: line {n}: no heading for {t}"));
                }
            }
        }
    }
    assert!(checked >= 20, "links found: {checked}");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn slugs_follow_githubs_heading_ids() {
    assert_eq!(
        slug("Crash consistency: `make chaos`"),
        "crash-consistency-make-chaos"
    );
    assert_eq!(slug("10. Budgets"), "10-budgets");
    assert_eq!(
        slug("Scenario files (`tests/scenarios/*.json`)"),
        "scenario-files-testsscenariosjson"
    );
    assert_eq!(
        slug("LuCI app: luci-app-jellydemon"),
        "luci-app-luci-app-jellydemon"
    );
}
