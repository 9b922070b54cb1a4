//! `shoalctl` against a real `shoal-control-plane`, both as the built binaries: apply, get, delete, the
//! errors and exit codes, and a restart on the same data directory. Every wait has a deadline.
//!
//! - `harness`: start and stop the control plane on port 0, run `shoalctl`, check exit codes and output.
//! - `round_trip`: apply every enforced kind, `get -o yaml` applies again unchanged, tables, JSON, delete;
//!   the documented examples apply, or are refused where docs/shoalctl.md says so.
//! - `errors`: every bad input gets a clear message and the documented exit code; what shoal-proxy does not
//!   enforce yet is refused naming the kind or field.
//! - `hosts`: a service claiming another service's host is refused, naming the field and the other service.
//! - `limits`: a document over the Admin request limit names the limit and the setting that raises it.
//! - `restart`: resources and versions survive a restart on the same data directory.
//! - `identity`: `token` and `ca` commands, a certificate from the real binary's Identity service, the CA
//!   (and a rotation in progress) surviving a restart, and CA settings that stop start-up.

mod errors;
mod harness;
mod hosts;
mod identity;
mod limits;
mod restart;
mod round_trip;
