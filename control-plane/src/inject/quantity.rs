//! Kubernetes resource quantities (`100m`, `0.5`, `64Mi`, `1e3`), checked before they reach a pod spec: the API
//! server would refuse the whole pod for a bad one, with a message that does not name the annotation.

/// The value of `text` in base units (cores, bytes), or why it is not a quantity. Negative quantities are
/// refused: a request or limit cannot be negative.
pub(crate) fn parse(text: &str) -> Result<f64, String> {
    const EXPECTED: &str =
        "expected a non-negative Kubernetes quantity such as 100m, 0.5, 64Mi or 1Gi";
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let digits = number.chars().filter(char::is_ascii_digit).count();
    if digits == 0 || number.matches('.').count() > 1 {
        return Err(EXPECTED.to_owned());
    }
    let value: f64 = number.parse().map_err(|_| EXPECTED.to_owned())?;
    let multiplier = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exponent => {
            // A decimal exponent: e3, E-2, e+6.
            let digits = exponent
                .strip_prefix(['e', 'E'])
                .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e))
                .filter(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
                .ok_or_else(|| EXPECTED.to_owned())?;
            let power: i32 = digits.parse().map_err(|_| EXPECTED.to_owned())?;
            let power = if exponent[1..].starts_with('-') {
                -power
            } else {
                power
            };
            10f64.powi(power)
        }
    };
    Ok(value * multiplier)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn quantities_in_every_form() {
        for (text, value) in [
            ("100m", 0.1),
            ("0.5", 0.5),
            ("2", 2.0),
            (".5", 0.5),
            ("64Mi", 64.0 * 1024.0 * 1024.0),
            ("1Gi", 1024.0 * 1024.0 * 1024.0),
            ("1k", 1000.0),
            ("1e3", 1000.0),
            ("5E-1", 0.5),
        ] {
            assert_eq!(parse(text), Ok(value), "{text}");
        }
        for bad in [
            "", "-1", "+1", "1.2.3", "Mi", "64MiB", "64 Mi", "1e", "ten", "1x",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
