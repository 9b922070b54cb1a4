//! The Admin API in-process: the real `AdminService` over a real store in a temporary directory, served by
//! tonic on 127.0.0.1:0 and called through the generated client. Waits use deadlines, never bare sleeps.
//!
//! - `harness`: start a server, build resources and requests, assert statuses, wait with a deadline.
//! - `crud`: create/replace/delete/get/list with optimistic concurrency; errors that name the field.
//! - `watch`: ADDED / MODIFIED / DELETED in order; OUT_OF_RANGE for versions outside the history.
//! - `registrations`: heartbeats keep registrations alive; without them they expire.

mod crud;
mod harness;
mod registrations;
mod watch;
