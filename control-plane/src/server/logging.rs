//! Structured logs, plain or JSON, to standard output.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use super::config::{LogFormat, env};

/// Installs the global subscriber. The error names `SHOAL_LOG` when the filter does not parse.
pub fn init(directives: &str, format: LogFormat) -> Result<(), String> {
    let filter = EnvFilter::builder().parse(directives).map_err(|e| {
        format!(
            "invalid configuration: {}={directives:?}: expected a filter such as `info` or `info,shoal_control_plane=debug` ({e})",
            env::LOG
        )
    })?;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (plain, json) = match format {
        LogFormat::Plain => (Some(tracing_subscriber::fmt::layer().with_ansi(ansi)), None),
        LogFormat::Json => {
            let json = tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false);
            (None, Some(json))
        }
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(plain)
        .with(json)
        .try_init()
        .map_err(|e| format!("cannot install the logger: {e}"))
}
