//! ARCHITECTURE.md names only paths that exist, and points nowhere outside the repository.
//!
//! The file describes the code by its paths; a moved or deleted file would leave it pointing at
//! nothing without anyone noticing. Checked:
//!
//! - every path in backticks that looks like one (contains `/` and ends in a file extension or in
//!   `/`; URLs and `<placeholders>` aside) exists in the repository;
//! - every plain-text word that starts with a top-level directory of the repository
//!   (`proxy/src/...`, `docs/...`) exists too;
//! - nothing points above the repository (`../`).

use std::path::Path;

use shoal_tests::proxy::workspace_root;

/// The doc this test keeps honest.
const DOC: &str = "ARCHITECTURE.md";

/// Whether a backticked token looks like a repository path.
fn looks_like_path(token: &str) -> bool {
    if !token.contains('/')
        || token.contains("://")
        || token.contains(['<', '>', ' ', '$', '*'])
        || token.starts_with('/')
    {
        return false;
    }
    if token.ends_with('/') {
        return true;
    }
    let last = token.rsplit('/').next().unwrap_or("");
    // A file extension: a dot followed by a letter, then letters or digits (`lib.rs`,
    // `config.toml`), which `http/1.1` is not.
    last.rsplit_once('.').is_some_and(|(stem, ext)| {
        !stem.is_empty()
            && ext.starts_with(|c: char| c.is_ascii_alphabetic())
            && ext.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

/// The backticked tokens of `text` that look like paths.
fn backticked_paths(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    // Code blocks (```) hold diagrams, not paths; inline spans are the odd pieces between single
    // backticks of each remaining line.
    let mut in_block = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if in_block {
            continue;
        }
        for (i, piece) in line.split('`').enumerate() {
            if i % 2 == 1 && looks_like_path(piece) {
                out.push(piece.to_string());
            }
        }
    }
    out
}

/// The plain words of `text` that start with one of `roots` and a `/`.
fn rooted_words(text: &str, roots: &[String]) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || matches!(c, '`' | '(' | ')' | ',' | ';' | '"'))
        .map(|w| w.trim_end_matches(['.', ':', ',']))
        .filter(|w| {
            roots
                .iter()
                .any(|r| w.starts_with(r.as_str()) && w[r.len()..].starts_with('/'))
        })
        .filter(|w| !w.contains(['<', '*', '$']))
        .map(str::to_string)
        .collect()
}

/// The repository's top-level directories (`proxy`, `docs`, ...), hidden ones aside.
fn top_level_dirs(root: &Path) -> Vec<String> {
    let mut dirs: Vec<String> = std::fs::read_dir(root)
        .expect("read the repository root")
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "target")
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn every_path_architecture_md_names_exists() {
    let root = workspace_root();
    let text = std::fs::read_to_string(root.join(DOC)).expect("read ARCHITECTURE.md");
    let roots = top_level_dirs(&root);
    assert!(
        roots.iter().any(|r| r == "proxy"),
        "the repository root was not found: {roots:?}"
    );

    let backticked = backticked_paths(&text);
    let rooted = rooted_words(&text, &roots);
    assert!(
        backticked.len() >= 5 && rooted.len() >= 10,
        "too few paths found; is the extraction broken? {backticked:?} {rooted:?}"
    );
    let mut missing: Vec<&String> = backticked
        .iter()
        .chain(&rooted)
        .filter(|p| !root.join(p).exists())
        .collect();
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "{DOC} names paths that do not exist in the repository: {missing:?}; fix the path or the text"
    );
    let outside: Vec<&str> = text.lines().filter(|l| l.contains("../")).collect();
    assert!(
        outside.is_empty(),
        "{DOC} points outside the repository (it must be self-contained): {outside:?}"
    );
}

#[test]
fn the_extraction_finds_what_it_must() {
    let text = "see `proxy/src/lib.rs` and `vendor/` and `http/1.1`, `/config`, `spiffe://td/ns/a`\n\
                ```\nnot `in/a/block.rs`\n```\n\
                plain proxy/src/gone.rs, and (docs/errors.md).";
    assert_eq!(backticked_paths(text), ["proxy/src/lib.rs", "vendor/"]);
    let roots = ["docs".to_string(), "proxy".to_string()];
    assert_eq!(
        rooted_words(text, &roots),
        ["proxy/src/lib.rs", "proxy/src/gone.rs", "docs/errors.md"]
    );
}
