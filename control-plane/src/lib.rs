//! Shoal's control plane, as a library: what the `shoal-control-plane` binary serves and `shoalctl` talks to.
//!
//! The parts, in the order a write meets them:
//!
//! - [`convert`]: the edge between the wire (`shoal.v1`, crate `shoal-proto`) and the domain model;
//!   `TryFrom<v1::X>` in, `From<domain>` out.
//! - [`model`]: the domain model (services, endpoints, routes and every policy kind), independent of the wire
//!   and of Kubernetes, and [`model::validate`], which every write passes before it is stored.
//! - [`store`]: the durable store for standalone mode: validated writes, on disk before they are acknowledged,
//!   one store-wide revision counter, optimistic concurrency, and a change feed (`changes_since`, with
//!   tombstones for deletes) for discovery and `Watch`.
//!
//! Still to come (see ARCHITECTURE.md): `discovery` (the proxy-facing gRPC stream), `admin` (the operator API
//! over the store), `identity` (the CA; its keys and join tokens get their own table in the store), and
//! `sources` (endpoint sources: static file, registrations, DNS, Kubernetes).

#![warn(missing_docs)]

pub mod convert;
pub mod discovery;
pub mod model;
pub mod store;
