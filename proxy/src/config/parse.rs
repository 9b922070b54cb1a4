//! Typed reading of raw settings, with errors that name the setting, the value and what was
//! expected.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use super::{Mode, Source};

/// A setting that could not be used; the message names it and says what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value did not parse or was out of range.
    #[error("invalid configuration: {setting}={value:?} (from {origin}): expected {expected}")]
    Invalid {
        /// The setting's variable name.
        setting: String,
        /// The value given.
        value: String,
        /// Where the value came from: `env` or a file path.
        origin: String,
        /// What would have been accepted.
        expected: String,
    },
    /// The configuration file could not be read or parsed.
    #[error("invalid configuration file {path}: {problem}")]
    File {
        /// The file's path.
        path: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Reads typed values out of a [`Source`], falling back to defaults.
pub(super) struct Reader<'a> {
    source: &'a Source,
}

impl<'a> Reader<'a> {
    pub(super) fn new(source: &'a Source) -> Self {
        Self { source }
    }

    fn raw(&self, name: &str) -> Option<&'a str> {
        self.source
            .values
            .get(name)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    pub(super) fn invalid(&self, name: &str, value: &str, expected: &str) -> ConfigError {
        ConfigError::Invalid {
            setting: name.to_string(),
            value: value.to_string(),
            origin: self
                .source
                .origin
                .get(name)
                .cloned()
                .unwrap_or_else(|| "default".into()),
            expected: expected.to_string(),
        }
    }

    pub(super) fn string(&self, name: &str, default: &str) -> String {
        self.raw(name).unwrap_or(default).to_string()
    }

    pub(super) fn opt_string(&self, name: &str) -> Option<String> {
        self.raw(name).map(str::to_string)
    }

    pub(super) fn addr(&self, name: &str, default: &str) -> Result<SocketAddr, ConfigError> {
        let raw = self.raw(name).unwrap_or(default);
        raw.parse().map_err(|_| {
            self.invalid(
                name,
                raw,
                "an IP:PORT socket address such as 127.0.0.1:15001",
            )
        })
    }

    pub(super) fn mode(&self, name: &str, default: Mode) -> Result<Mode, ConfigError> {
        match self.raw(name) {
            None => Ok(default),
            Some("transparent") => Ok(Mode::Transparent),
            Some("explicit") => Ok(Mode::Explicit),
            Some("off") => Ok(Mode::Off),
            Some(other) => Err(self.invalid(name, other, "`transparent`, `explicit` or `off`")),
        }
    }

    pub(super) fn int_in(
        &self,
        name: &str,
        default: usize,
        range: RangeInclusive<usize>,
    ) -> Result<usize, ConfigError> {
        let Some(raw) = self.raw(name) else {
            return Ok(default);
        };
        let expected = format!("a whole number from {} to {}", range.start(), range.end());
        match raw.replace('_', "").parse::<usize>() {
            Ok(v) if range.contains(&v) => Ok(v),
            _ => Err(self.invalid(name, raw, &expected)),
        }
    }

    /// A fraction from 0 to 1 (`0.25`, or `25%`).
    pub(super) fn ratio(&self, name: &str, default: f64) -> Result<f64, ConfigError> {
        let Some(raw) = self.raw(name) else {
            return Ok(default);
        };
        let parsed = match raw.strip_suffix('%') {
            Some(pct) => pct.trim().parse::<f64>().map(|p| p / 100.0),
            None => raw.parse::<f64>(),
        };
        match parsed {
            Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
            _ => Err(self.invalid(name, raw, "a ratio from 0 to 1, such as 0.01 (or 1%)")),
        }
    }

    pub(super) fn bool(&self, name: &str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(default),
            Some("true" | "1" | "yes" | "on") => Ok(true),
            Some("false" | "0" | "no" | "off") => Ok(false),
            Some(other) => Err(self.invalid(name, other, "`true` or `false`")),
        }
    }

    fn duration(&self, name: &str, default: &str) -> Result<Duration, ConfigError> {
        let raw = self.raw(name).unwrap_or(default);
        humantime::parse_duration(raw)
            .map_err(|_| self.invalid(name, raw, "a duration such as 500ms, 10s or 1m"))
    }

    /// A duration of at least `min_ms` milliseconds.
    pub(super) fn duration_min(
        &self,
        name: &str,
        default: &str,
        min_ms: u64,
    ) -> Result<Duration, ConfigError> {
        let d = self.duration(name, default)?;
        if d < Duration::from_millis(min_ms) || d > Duration::from_secs(7 * 24 * 3600) {
            let raw = self.raw(name).unwrap_or(default);
            let expected = if min_ms == 0 {
                "a duration of at most 7 days".to_string()
            } else {
                format!("a duration of at least {min_ms}ms and at most 7 days")
            };
            return Err(self.invalid(name, raw, &expected));
        }
        Ok(d)
    }

    /// A duration where `0s` means disabled.
    pub(super) fn opt_duration(
        &self,
        name: &str,
        default: &str,
    ) -> Result<Option<Duration>, ConfigError> {
        let d = self.duration_min(name, default, 0)?;
        Ok((!d.is_zero()).then_some(d))
    }
}

/// Checks a `host:port` target (a name or an IP, and a port).
pub(super) fn validate_host_port(
    name: &str,
    value: &str,
    source: &Source,
) -> Result<(), ConfigError> {
    let ok = value
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(Reader::new(source).invalid(
            name,
            value,
            "HOST:PORT, e.g. 127.0.0.1:8080 or db.local:5432",
        ))
    }
}

/// Parses a comma-separated port list; the error says what was expected.
pub(super) fn parse_ports(raw: &str) -> Result<Vec<u16>, String> {
    let mut ports = Vec::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u16>() {
            Ok(p) if p > 0 => ports.push(p),
            _ => {
                return Err(format!(
                    "a comma-separated list of ports 1-65535 (`{part}` is not one)"
                ));
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

/// Serialises durations in humantime form for `/config`.
pub(crate) mod duration_serde {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// Serialises optional durations (`0s` when disabled) for `/config`.
pub(super) mod opt_duration_serde {
    use std::time::Duration;

    pub fn serialize<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_str("0s"),
        }
    }
}
