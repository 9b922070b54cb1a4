//! docs/metrics.md read back for the tests: its tables of metric families and its PromQL examples,
//! and the families of a real exposition to compare them with.

use std::collections::{BTreeMap, BTreeSet};

/// A metric family: its type and label names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Family {
    /// `counter`, `gauge` or `histogram`.
    pub kind: String,
    /// Every label a series of the family may carry (histograms' `le` excluded).
    pub labels: BTreeSet<String>,
}

/// The text of docs/metrics.md.
pub fn text() -> String {
    let path = crate::proxy::workspace_root().join("docs/metrics.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The families the page's tables list: rows `| \`name\` | type | \`label\`, ... | meaning |`.
pub fn documented_families(doc: &str) -> BTreeMap<String, Family> {
    let mut families = BTreeMap::new();
    for line in doc.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // "| a | b | c | d |" splits into ["", a, b, c, d, ""].
        let [_, name, kind, labels, _meaning, _] = cells[..] else {
            continue;
        };
        let Some(name) = name
            .strip_prefix('`')
            .and_then(|n| n.strip_suffix('`'))
            .filter(|n| n.starts_with("shoal_"))
        else {
            continue;
        };
        let labels = labels
            .split(',')
            .map(|l| l.trim().trim_matches('`'))
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        let family = Family {
            kind: kind.to_string(),
            labels,
        };
        if families.insert(name.to_string(), family).is_some() {
            panic!("docs/metrics.md lists {name} twice");
        }
    }
    families
}

/// The page's PromQL examples: each ```` ```promql ```` block, keyed by its first line's comment
/// (`# Success rate per route`), the query being the rest.
pub fn documented_queries(doc: &str) -> BTreeMap<String, String> {
    let mut queries = BTreeMap::new();
    let mut rest = doc;
    while let Some(start) = rest.find("```promql\n") {
        let block = &rest[start + "```promql\n".len()..];
        let end = block.find("```").expect("an unterminated promql block");
        let (first, query) = block[..end].split_once('\n').expect("a promql block");
        let title = first
            .strip_prefix("# ")
            .unwrap_or_else(|| panic!("a promql block without a `# title` first line: {first}"));
        queries.insert(title.to_string(), query.trim().to_string());
        rest = &block[end + 3..];
    }
    queries
}

/// The families of a Prometheus text exposition, from its `# TYPE` lines and the label names of
/// each family's samples (a histogram's `_bucket`, `_sum` and `_count`, without `le`).
pub fn exposed_families(exposition: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name type");
            families.insert(
                name.to_string(),
                Family {
                    kind: kind.trim().to_string(),
                    labels: BTreeSet::new(),
                },
            );
        }
    }
    for sample in crate::prom::parse(exposition) {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .filter_map(|s| sample.name.strip_suffix(s))
            .find(|base| families.get(*base).is_some_and(|f| f.kind == "histogram"))
            .unwrap_or(&sample.name)
            .to_string();
        let entry = families
            .get_mut(&family)
            .unwrap_or_else(|| panic!("{} has no # TYPE line", sample.name));
        entry.labels.extend(
            sample
                .labels
                .iter()
                .map(|(k, _)| k.clone())
                .filter(|k| k != "le"),
        );
    }
    families
}

/// Every `"shoal_..."` string literal in the Rust sources under `dir` (the metric names the code
/// uses: no other string literal starts with `shoal_`).
pub fn names_in_code(dir: &std::path::Path) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices("\"shoal_") {
                    let name: String = text[i + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    if text[i + 1 + name.len()..].starts_with('"') {
                        names.insert(name);
                    }
                }
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_tables_queries_and_expositions() {
        let doc = "| metric | type | labels | meaning |\n|---|---|---|---|\n\
            | `shoal_x_total` | counter | `a`, `b` | x |\n| `shoal_y` | gauge | | y |\n\
            | `direction` | outbound |\n\n```promql\n# Rate\nrate(shoal_x_total[5m])\n```\n";
        let families = documented_families(doc);
        assert_eq!(families.len(), 2, "{families:?}");
        assert_eq!(families["shoal_x_total"].kind, "counter");
        assert_eq!(
            families["shoal_x_total"].labels,
            ["a", "b"].map(String::from).into()
        );
        assert!(families["shoal_y"].labels.is_empty());
        assert_eq!(
            documented_queries(doc)["Rate"],
            "rate(shoal_x_total[5m])".to_string()
        );
        let exposed = exposed_families(
            "# TYPE h histogram\nh_bucket{a=\"1\",le=\"1\"} 1\nh_count{a=\"1\"} 1\n\
             # TYPE c counter\nc{b=\"2\"} 3\n",
        );
        assert_eq!(exposed["h"].labels, ["a"].map(String::from).into());
        assert_eq!(exposed["c"].kind, "counter");
    }
}
