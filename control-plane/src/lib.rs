//! Shoal's control plane, as a library: what the `shoal-control-plane` binary serves and `shoalctl` talks to.
//!
//! The parts, in the order a write meets them:
//!
//! - [`convert`] — the edge between the wire (`shoal.v1`, crate `shoal-proto`) and the domain model;
//!   `TryFrom<v1::X>` in, `From<domain>` out.
//! - [`model`] — the domain model (services, endpoints, routes and every policy kind), independent of the wire
//!   and of Kubernetes, and [`model::validate`], which every write passes before it is stored.
//! - [`store`] — the durable store for standalone mode: validated writes, on disk before they are acknowledged,
//!   one store-wide revision counter, optimistic concurrency, and a change feed (`changes_since`, with
//!   tombstones for deletes) for discovery and `Watch`.
//!
//! - [`admin`] — the operator API (`shoal.v1.Admin`) over the store: CRUD with optimistic concurrency,
//!   `Watch`, registration heartbeats and expiry, and `Status` from discovery.
//! - [`discovery`] — the proxy-facing stream (`shoal.v1.Discovery`): a catalog derived from the store,
//!   on-demand subscriptions, incremental pushes, ACK/NACK and per-proxy sync state.
//! - [`server`] — the `shoal-control-plane` process: configuration, listeners, metrics, shutdown.
//! - [`cli`] — the `shoalctl` command.
//! - [`inject`] — sidecar injection: the pure pod mutation behind the admission webhook (`server::webhook`) and
//!   `shoalctl inject`.
//! - [`up`] — `shoal up`: a whole local mesh (control plane, demo apps, sidecars) in one command.
//! - [`sources`] — endpoint sources behind one trait: a watched static file, DNS names, and Kubernetes
//!   (Services, EndpointSlices, Pods); registrations come through the store.
//!
//! - [`identity`] — the mesh CA: `shoal.v1.Identity.Certify` (CSR + credential in, short-lived SPIFFE
//!   certificate out), join tokens, and root rotation with the trust bundle pushed through discovery. Its keys
//!   and token hashes live in the store's separate identity table.

#![warn(missing_docs)]

pub mod admin;
pub mod cli;
pub mod convert;
pub mod discovery;
pub mod identity;
// Sidecar injection: the pod mutation shared by the admission webhook and `shoalctl inject`.
pub mod inject;
pub mod model;
pub mod server;
// Endpoint sources (static file, DNS, Kubernetes) feeding discovery's hub.
pub mod sources;
pub mod store;
pub mod up;
