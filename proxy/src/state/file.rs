//! The static state file: services, endpoints and routes from YAML, without a control plane.
//!
//! Loaded at start-up, reloaded when the file changes (polled) or on SIGHUP. An invalid file is
//! rejected with an error naming the field, and the last good state keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::Store;
use super::model::State;
use super::spec::{FileSpec, build};

/// Parses and validates state-file text into a [`State`]; errors name the offending field.
pub fn parse(text: &str) -> Result<State, String> {
    let spec: FileSpec = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    build(spec)
}

/// Loads `path` into `store`; on error the store keeps its state and records the error.
pub fn load_into(store: &Store, path: &Path) -> Result<u64, String> {
    let result = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read state file {}: {e}", path.display()))
        .and_then(|text| {
            parse(&text).map_err(|e| format!("invalid state file {}: {e}", path.display()))
        });
    match result {
        Ok(state) => {
            let n = state.services.len();
            let version = store.replace(state);
            tracing::info!(path = %path.display(), services = n, version, "state file loaded");
            Ok(version)
        }
        Err(e) => {
            tracing::error!(error = %e, "state file rejected; keeping the last good state");
            store.reject(e.clone());
            Err(e)
        }
    }
}

/// Reloads the state file when it changes (polled every `interval`) or on SIGHUP.
pub async fn watch(store: Arc<Store>, path: PathBuf, interval: Duration) {
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()))
    };
    let mut last = stamp(&path);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let forced = tokio::select! {
            _ = tick.tick() => false,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
        };
        let now = stamp(&path);
        if forced || now != last {
            last = now;
            let _ = load_into(&store, &path);
        }
    }
}

#[cfg(test)]
mod tests;
