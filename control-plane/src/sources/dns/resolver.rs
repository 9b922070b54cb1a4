//! [`Resolve`] with hickory-resolver and the system's configuration.

use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use super::{Resolve, Resolved};

/// Resolves with the name servers of `/etc/resolv.conf`, after `/etc/hosts` (both read once, at start).
pub struct SystemResolver {
    resolver: Result<TokioResolver, String>,
}

impl std::fmt::Debug for SystemResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemResolver").finish_non_exhaustive()
    }
}

impl Default for SystemResolver {
    fn default() -> Self {
        Self::new()
    }
}

impl SystemResolver {
    /// Reads the system configuration. Without a usable `/etc/resolv.conf` (a minimal container) the
    /// resolver still answers from `/etc/hosts`; that is logged, and names not found there fail.
    pub fn new() -> Self {
        let mut builder = TokioResolver::builder_tokio().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the system DNS configuration; resolving from /etc/hosts only");
            TokioResolver::builder_with_config(ResolverConfig::default(), TokioRuntimeProvider::default())
        });
        let options: &mut ResolverOpts = builder.options_mut();
        // Both families, IPv4 first: an external service may be reachable over either.
        options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Local names (and test names) come from /etc/hosts, as for every other program on the host.
        options.use_hosts_file = ResolveHosts::Always;
        let resolver = builder.build().map_err(|e| e.to_string());
        if let Err(error) = &resolver {
            tracing::error!(%error, "cannot build the DNS resolver; dns endpoints will not resolve");
        }
        Self { resolver }
    }
}

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Resolved, String>> {
        async move {
            let resolver = self.resolver.as_ref().map_err(Clone::clone)?;
            let lookup = resolver.lookup_ip(host).await.map_err(|e| e.to_string())?;
            let ttl = lookup
                .valid_until()
                .saturating_duration_since(Instant::now());
            Ok(Resolved {
                addresses: lookup.iter().collect(),
                ttl,
            })
        }
        .boxed()
    }
}
