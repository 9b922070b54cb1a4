//! The `file` source: the endpoints file's `services`, published as written.

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::file::EndpointsFile;
use super::{EndpointSource, Publisher};

/// Publishes the `services` of the endpoints file's last good content; a service removed from the file is
/// withdrawn.
#[derive(Debug)]
pub struct StaticFileSource {
    documents: watch::Receiver<Arc<EndpointsFile>>,
}

impl StaticFileSource {
    /// A source following `documents` (from [`super::watch::FileWatcher::subscribe`]).
    pub fn new(documents: watch::Receiver<Arc<EndpointsFile>>) -> Self {
        Self { documents }
    }
}

impl EndpointSource for StaticFileSource {
    fn name(&self) -> &'static str {
        "file"
    }

    fn run(
        self: Box<Self>,
        mut publisher: Publisher,
        mut closing: watch::Receiver<bool>,
    ) -> BoxFuture<'static, ()> {
        let mut documents = self.documents;
        async move {
            loop {
                let current = documents.borrow_and_update().clone();
                let before = publisher.published().clone();
                publisher.replace_all(&current.services);
                // The file also changes for its `dns` entries: log only what changed here.
                if before != *publisher.published() {
                    let endpoints: usize = current.services.values().map(Vec::len).sum();
                    tracing::info!(
                        source = "file",
                        services = current.services.len(),
                        endpoints,
                        "endpoint source published"
                    );
                }
                tokio::select! {
                    changed = documents.changed() => if changed.is_err() { return },
                    _ = closing.wait_for(|c| *c) => return,
                }
            }
        }
        .boxed()
    }
}
