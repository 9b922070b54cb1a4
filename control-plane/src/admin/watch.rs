//! `Watch`: the current resources as `ADDED` (from version 0), then every change in version order, by
//! following the store's revision (`subscribe`) and its change feed (`changes_since`).
//!
//! A slow client never loses a change: the stream only reads the feed when the client asks for the next
//! event, and the feed returns the latest state of everything written since the last read. Rapid writes to
//! one resource may therefore arrive as one event with its latest state.

use std::collections::VecDeque;
use std::pin::Pin;

use futures_util::Stream;
use shoal_proto::v1;
use shoal_proto::v1::WatchEventType::{Added, Deleted, Modified};
use tokio::sync::watch;
use tonic::Status;

use super::{errors, request};
use crate::model::{Resource, ResourceKind};
use crate::store::{Change, Store};

/// The stream type of `Watch`.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<v1::WatchEvent, Status>> + Send>>;

/// Follows the store for one `Watch` call. Fails before streaming for a bad filter or a version outside the
/// kept history (`OUT_OF_RANGE`).
pub(super) fn start(
    store: Store,
    req: &v1::WatchRequest,
    closing: watch::Receiver<bool>,
) -> Result<WatchStream, Status> {
    let kind = request::kind_filter(req.kind)?;
    let namespace = request::namespace_filter(&req.namespace).map(str::to_owned);
    // Subscribe before reading, so a write between the read and the first wait still wakes us.
    let updates = store.subscribe();
    let mut follow = Follow {
        store,
        kind,
        namespace,
        revision: req.from_version,
        pending: VecDeque::new(),
        updates,
        closing,
        done: false,
    };
    if req.from_version == 0 {
        let listing = follow.store.list(kind, follow.namespace.as_deref());
        follow.revision = listing.revision;
        let added = listing.resources.iter().map(|s| event(Added, &s.resource));
        follow.pending.extend(added);
    } else {
        follow.read().map_err(|e| errors::from_store(&e))?;
    }
    Ok(Box::pin(futures_util::stream::unfold(follow, Follow::next)))
}

struct Follow {
    store: Store,
    kind: Option<ResourceKind>,
    namespace: Option<String>,
    /// The store revision the client has seen all changes up to.
    revision: u64,
    pending: VecDeque<v1::WatchEvent>,
    updates: watch::Receiver<u64>,
    closing: watch::Receiver<bool>,
    done: bool,
}

impl Follow {
    async fn next(mut self) -> Option<(Result<v1::WatchEvent, Status>, Self)> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            if self.done {
                return None;
            }
            if *self.updates.borrow_and_update() <= self.revision {
                tokio::select! {
                    changed = self.updates.changed() => if changed.is_err() { return None },
                    _ = self.closing.wait_for(|closing| *closing) => return None,
                }
                continue;
            }
            if let Err(error) = self.read() {
                // The feed no longer reaches back to us: the client must list again.
                self.done = true;
                return Some((Err(errors::from_store(&error)), self));
            }
        }
    }

    /// Queues the changes after `revision` that pass the filter, and advances `revision`.
    fn read(&mut self) -> crate::store::Result<()> {
        let changes = self.store.changes_since(self.revision)?;
        for change in &changes.changes {
            let resource = change.resource();
            if !request::matches(resource, self.kind, self.namespace.as_deref()) {
                continue;
            }
            let event = match change {
                // Created after what the client saw (even if modified since): new to the client.
                Change::Put(stored) if stored.created_version > self.revision => {
                    event(Added, resource)
                }
                Change::Put(_) => event(Modified, resource),
                Change::Deleted(tombstone) => {
                    let mut event = event(Deleted, resource);
                    if let Some(meta) = event.resource.as_mut().and_then(|r| r.metadata.as_mut()) {
                        meta.resource_version = tombstone.deleted_version;
                    }
                    event
                }
            };
            self.pending.push_back(event);
        }
        self.revision = changes.revision;
        Ok(())
    }
}

fn event(kind: v1::WatchEventType, resource: &Resource) -> v1::WatchEvent {
    v1::WatchEvent {
        r#type: kind.into(),
        resource: Some(resource.into()),
    }
}
