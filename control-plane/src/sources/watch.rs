//! Watches the endpoints file by polling its modification time and length (every [`POLL_INTERVAL`]): no
//! inotify dependency, and it works the same on bind mounts, ConfigMap symlink swaps and network file
//! systems where change notifications are unreliable.
//!
//! Only valid content is handed on: an invalid edit (or a deleted file) is logged with the problem and the
//! sources keep the last good content.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::file::{EndpointsFile, FileError};

/// How often the file's metadata is checked.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// What the file looked like when last read: a change of either means "read it again".
type Stamp = (SystemTime, u64);

/// Holds the last good content of the endpoints file and publishes every valid new version.
#[derive(Debug)]
pub struct FileWatcher {
    path: PathBuf,
    /// `None` while the file cannot be read, so a missing file is reported once, not every second.
    stamp: Option<Stamp>,
    /// The text last read, valid or not: a new stamp with the same text (a `touch`) is not re-parsed.
    text: String,
    good: watch::Sender<Arc<EndpointsFile>>,
}

/// The result of one [`FileWatcher::poll`].
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// Nothing new to read.
    Unchanged,
    /// New valid content, handed to the sources.
    Updated,
    /// New content that is not valid (or the file is gone); the last good content stays. The message
    /// names the problem.
    Rejected(String),
}

impl FileWatcher {
    /// Reads and checks the file; fails if it is missing or invalid.
    pub async fn load(path: &Path) -> Result<Self, FileError> {
        let stamp = stamp(path).await.ok();
        let text = tokio::fs::read_to_string(path)
            .await
            .map_err(|source| FileError::Read {
                path: path.to_owned(),
                source,
            })?;
        let content = EndpointsFile::parse(&text).map_err(|message| FileError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(Self {
            path: path.to_owned(),
            stamp,
            text,
            good: watch::channel(Arc::new(content)).0,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The last good content.
    pub fn current(&self) -> Arc<EndpointsFile> {
        self.good.borrow().clone()
    }

    /// Follows the last good content.
    pub fn subscribe(&self) -> watch::Receiver<Arc<EndpointsFile>> {
        self.good.subscribe()
    }

    /// Checks the file once and reads it again if its modification time or length changed.
    pub async fn poll(&mut self) -> Poll {
        let now = match stamp(&self.path).await {
            Ok(now) => now,
            Err(e) if self.stamp.take().is_some() => {
                return Poll::Rejected(format!("cannot read {}: {e}", self.path.display()));
            }
            Err(_) => return Poll::Unchanged,
        };
        if self.stamp.replace(now) == Some(now) {
            return Poll::Unchanged;
        }
        let text = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => text,
            Err(e) => {
                self.stamp = None;
                return Poll::Rejected(format!("cannot read {}: {e}", self.path.display()));
            }
        };
        if text == self.text {
            return Poll::Unchanged;
        }
        let parsed = EndpointsFile::parse(&text);
        self.text = text;
        match parsed {
            Ok(content) => {
                self.good.send_if_modified(|current| {
                    let modified = **current != content;
                    *current = Arc::new(content);
                    modified
                });
                Poll::Updated
            }
            Err(message) => Poll::Rejected(message),
        }
    }

    /// Polls every [`POLL_INTERVAL`] until `closing` turns true, logging each reload and each rejection.
    pub async fn run(mut self, mut closing: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(POLL_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let path = self.path.display().to_string();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = closing.wait_for(|c| *c) => return,
            }
            match self.poll().await {
                Poll::Unchanged => {}
                Poll::Updated => {
                    let current = self.current();
                    metrics::counter!("shoal_cp_endpoints_file_reloads_total", "result" => "ok")
                        .increment(1);
                    tracing::info!(
                        path,
                        static_services = current.services.len(),
                        dns_services = current.dns.len(),
                        "endpoints file reloaded"
                    );
                }
                Poll::Rejected(error) => {
                    metrics::counter!("shoal_cp_endpoints_file_reloads_total", "result" => "invalid")
                        .increment(1);
                    tracing::error!(path, %error, "endpoints file rejected; keeping the last good content");
                }
            }
        }
    }
}

async fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let meta = tokio::fs::metadata(path).await?;
    Ok((meta.modified()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn valid_edits_are_handed_on_and_invalid_ones_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endpoints.yaml");
        let one =
            "services:\n  - {service: web.default, endpoints: [{address: 10.0.0.1, port: 80}]}\n";
        std::fs::write(&path, one).unwrap();
        let mut watcher = FileWatcher::load(&path).await.unwrap();
        let mut documents = watcher.subscribe();
        assert_eq!(watcher.poll().await, Poll::Unchanged);

        let two = one.replace("10.0.0.1", "10.0.0.22");
        std::fs::write(&path, &two).unwrap();
        assert_eq!(watcher.poll().await, Poll::Updated);
        assert!(documents.has_changed().unwrap());
        let address = |w: &FileWatcher| w.current().services["web.default"][0].address.to_string();
        assert_eq!(address(&watcher), "10.0.0.22");
        documents.borrow_and_update();

        // An invalid edit is reported once, and nothing is handed on.
        std::fs::write(&path, two.replace("port: 80", "port: http")).unwrap();
        let Poll::Rejected(error) = watcher.poll().await else {
            panic!("accepted an invalid file")
        };
        assert!(error.contains("services[0].endpoints[0].port"), "{error}");
        assert_eq!(watcher.poll().await, Poll::Unchanged);
        assert!(!documents.has_changed().unwrap());
        assert_eq!(address(&watcher), "10.0.0.22");

        // A deleted file is reported once; the last good content stays.
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(watcher.poll().await, Poll::Rejected(e) if e.contains("cannot read")));
        assert_eq!(watcher.poll().await, Poll::Unchanged);
        assert_eq!(address(&watcher), "10.0.0.22");
        std::fs::write(&path, one).unwrap();
        assert_eq!(watcher.poll().await, Poll::Updated);
        assert_eq!(address(&watcher), "10.0.0.1");
    }

    #[tokio::test]
    async fn a_missing_or_invalid_file_fails_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endpoints.yaml");
        let error = FileWatcher::load(&path).await.unwrap_err().to_string();
        assert!(error.contains("cannot read the endpoints file"), "{error}");
        std::fs::write(&path, "services: 3\n").unwrap();
        let error = FileWatcher::load(&path).await.unwrap_err().to_string();
        assert!(error.starts_with("invalid endpoints file"), "{error}");
    }
}
