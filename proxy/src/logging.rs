//! Structured logs (plain or JSON) with a filter that can be changed at runtime (`/log-level`).

use std::sync::Mutex;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, fmt, reload};

use crate::config::LogFormat;

/// Reads and replaces the log filter of the running process.
#[derive(Debug)]
pub struct LogHandle {
    reload: reload::Handle<EnvFilter, Registry>,
    current: Mutex<String>,
}

impl LogHandle {
    /// The filter in force.
    pub fn get(&self) -> String {
        crate::sync::lock(&self.current).clone()
    }

    /// Replaces the filter; an invalid directive is rejected and the old filter stays.
    pub fn set(&self, directives: &str) -> Result<(), String> {
        let directives = directives.trim();
        let filter = parse(directives)?;
        self.reload
            .reload(filter)
            .map_err(|e| format!("cannot change the log filter: {e}"))?;
        *crate::sync::lock(&self.current) = directives.to_string();
        Ok(())
    }
}

fn parse(directives: &str) -> Result<EnvFilter, String> {
    if directives.is_empty() {
        return Err("empty log filter: expected e.g. `info` or `info,shoal_proxy=debug`".into());
    }
    EnvFilter::builder().parse(directives).map_err(|e| {
        format!(
            "invalid log filter `{directives}`: {e}; expected e.g. `info` or `warn,access=info`"
        )
    })
}

/// Installs the global subscriber writing to stdout.
pub fn init(directives: &str, format: LogFormat) -> Result<LogHandle, String> {
    let filter = parse(directives).map_err(|e| format!("SHOAL_LOG: {e}"))?;
    let (filter, reload) = reload::Layer::new(filter);
    let (plain, json) = match format {
        LogFormat::Plain => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
            (Some(fmt::layer().with_target(true).with_ansi(ansi)), None)
        }
        LogFormat::Json => (
            None,
            Some(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(json)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))?;
    Ok(LogHandle {
        reload,
        current: Mutex::new(directives.to_string()),
    })
}
