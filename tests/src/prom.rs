//! A small parser for the Prometheus text exposition format, enough to read samples back.

/// One sample: `name{labels} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Metric name (for histograms including the `_bucket`/`_sum`/`_count` suffix).
    pub name: String,
    /// Label pairs in the order written.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// The value of label `name`, if present.
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses every sample line of `text` (comments and malformed lines are skipped).
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = line[..name_end].to_string();
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if rest.starts_with('{') {
        rest = &rest[1..];
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let label = rest[..eq].trim().to_string();
            rest = rest[eq + 1..].strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    '"' => break i,
                    c => value.push(c),
                }
            };
            rest = &rest[end + 1..];
            labels.push((label, value));
        }
    }
    let value_text = rest.split_whitespace().next()?;
    let value = match value_text {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name,
        labels,
        value,
    })
}

/// The samples named `name` whose labels include every pair of `labels`.
pub fn matching<'a>(samples: &'a [Sample], name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    samples
        .iter()
        .filter(|s| s.name == name && labels.iter().all(|(k, v)| s.label(k) == Some(*v)))
        .collect()
}

/// The sum of every series of `name` whose labels include all of `labels` (0 when none match):
/// `metric_value(text, "shoal_requests_total", &[("direction", "inbound"), ("status_code", "200")])`.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let samples = parse(text);
    matching(&samples, name, labels)
        .iter()
        .map(|s| s.value)
        .sum()
}

/// Whether any series of `name` with all of `labels` exists.
pub fn has_metric(text: &str, name: &str, labels: &[(&str, &str)]) -> bool {
    !matching(&parse(text), name, labels).is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_labels_escapes_and_sums() {
        let text = "# HELP x help\n# TYPE x counter\n\
            x{a=\"1\",b=\"q\\\"uote\"} 3\n\
            x{a=\"1\",b=\"other\"} 4.5\n\
            x{a=\"2\"} 10\n\
            y_bucket{le=\"+Inf\"} 7\n\
            z 1e3\n";
        assert_eq!(metric_value(text, "x", &[("a", "1")]), 7.5);
        assert_eq!(metric_value(text, "x", &[("b", "q\"uote")]), 3.0);
        assert_eq!(metric_value(text, "x", &[]), 17.5);
        assert_eq!(metric_value(text, "y_bucket", &[("le", "+Inf")]), 7.0);
        assert_eq!(metric_value(text, "z", &[]), 1000.0);
        assert_eq!(metric_value(text, "missing", &[]), 0.0);
        assert!(has_metric(text, "x", &[("a", "2")]));
        assert!(!has_metric(text, "x", &[("a", "3")]));
    }
}
