//! The proxy-facing resource table: what a proxy can subscribe to, computed from the store (and,
//! later, from endpoint sources).
//!
//! Every source record (a stored resource, or an endpoint source's batch) *contributes* entries
//! under discovery keys; an entry's payload is the merge of its contributions (the union of
//! endpoints for `ENDPOINTS`, the single contribution otherwise). Versions are content hashes, so
//! they survive control-plane restarts: a reconnecting proxy that holds the same content is sent
//! nothing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{Hash, Hasher};

use prost::Message;
use shoal_proto::v1::{self, discovery_resource::Payload};

/// A discovery key: resource type and name (e.g. `ROUTE backend.default`).
pub type Key = (i32, String);

/// Builds a [`Key`].
pub fn key(ty: v1::ResourceType, name: impl Into<String>) -> Key {
    (ty as i32, name.into())
}

/// The wire form of a [`Key`].
pub fn wire_key(k: &Key) -> v1::ResourceKey {
    v1::ResourceKey {
        r#type: k.0,
        name: k.1.clone(),
    }
}

/// What one source record says about one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Contribution {
    /// The whole payload (services, policies, address bindings).
    Whole(Payload),
    /// One endpoint of a service's `ENDPOINTS` (registrations, endpoint sources).
    Endpoint(v1::Endpoint),
}

/// A merged entry.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Content hash of the payload, in hex.
    pub version: String,
    /// What proxies receive.
    pub payload: Payload,
}

/// The table of entries and the contributions they were merged from.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Per key, per source: what the source says (several endpoints of one service from one source).
    contributions: HashMap<Key, BTreeMap<String, Vec<Contribution>>>,
    by_source: HashMap<String, Vec<Key>>,
    entries: HashMap<Key, Entry>,
}

impl Catalog {
    /// The current entry for `k`.
    pub fn get(&self, k: &Key) -> Option<&Entry> {
        self.entries.get(k)
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The sources whose name starts with `prefix`.
    pub fn sources_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.by_source
            .keys()
            .filter(|s| s.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Replaces everything `source` contributes; returns the keys whose entry changed.
    pub fn set_source(
        &mut self,
        source: &str,
        contributions: Vec<(Key, Contribution)>,
    ) -> Vec<Key> {
        let mut touched: HashSet<Key> = HashSet::new();
        if let Some(old) = self.by_source.remove(source) {
            for k in old {
                if let Some(c) = self.contributions.get_mut(&k) {
                    c.remove(source);
                    if c.is_empty() {
                        self.contributions.remove(&k);
                    }
                }
                touched.insert(k);
            }
        }
        let mut keys = Vec::with_capacity(contributions.len());
        for (k, c) in contributions {
            self.contributions
                .entry(k.clone())
                .or_default()
                .entry(source.to_string())
                .or_default()
                .push(c);
            touched.insert(k.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        if !keys.is_empty() {
            self.by_source.insert(source.to_string(), keys);
        }
        let mut changed = Vec::new();
        for k in touched {
            let merged = self.contributions.get(&k).and_then(|c| merge(&k, c));
            let differs = match (&merged, self.entries.get(&k)) {
                (Some(p), Some(e)) => *p != e.payload,
                (None, None) => false,
                _ => true,
            };
            if !differs {
                continue;
            }
            match merged {
                Some(payload) => {
                    let version = content_version(&payload);
                    self.entries.insert(k.clone(), Entry { version, payload });
                }
                None => {
                    self.entries.remove(&k);
                }
            }
            changed.push(k);
        }
        changed
    }
}

fn merge(k: &Key, contributions: &BTreeMap<String, Vec<Contribution>>) -> Option<Payload> {
    if k.0 == v1::ResourceType::Endpoints as i32 {
        let mut endpoints: Vec<v1::Endpoint> = contributions
            .values()
            .flatten()
            .filter_map(|c| match c {
                Contribution::Endpoint(e) => Some(e.clone()),
                Contribution::Whole(_) => None,
            })
            .collect();
        // Stable order, so the same set always hashes to the same version.
        endpoints.sort_by(|a, b| {
            (&a.address, a.port, a.service_port).cmp(&(&b.address, b.port, b.service_port))
        });
        endpoints.dedup_by(|a, b| {
            a.address == b.address && a.port == b.port && a.service_port == b.service_port
        });
        return Some(Payload::Endpoints(v1::Endpoints {
            service: k.1.clone(),
            endpoints,
        }));
    }
    // One contribution per key by construction (one policy per service); the lowest source wins.
    contributions.values().flatten().find_map(|c| match c {
        Contribution::Whole(p) => Some(p.clone()),
        Contribution::Endpoint(_) => None,
    })
}

/// A stable hash of the payload's encoding.
fn content_version(payload: &Payload) -> String {
    let resource = v1::DiscoveryResource {
        key: None,
        version: String::new(),
        payload: Some(payload.clone()),
    };
    // DefaultHasher::new() has fixed keys: the same content gives the same version in every run.
    let mut h = std::hash::DefaultHasher::new();
    resource.encode_to_vec().hash(&mut h);
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(addr: &str, port: u32) -> Contribution {
        Contribution::Endpoint(v1::Endpoint {
            address: addr.into(),
            port,
            weight: 1,
            ready: true,
            ..Default::default()
        })
    }

    #[test]
    fn endpoints_merge_across_sources_and_versions_follow_content() {
        let mut c = Catalog::default();
        let k = key(v1::ResourceType::Endpoints, "web.default");
        assert_eq!(
            c.set_source("reg/a", vec![(k.clone(), ep("10.0.0.1", 80))]),
            vec![k.clone()]
        );
        let v1 = c.get(&k).unwrap().version.clone();
        assert_eq!(
            c.set_source("reg/b", vec![(k.clone(), ep("10.0.0.2", 80))]),
            vec![k.clone()]
        );
        let Payload::Endpoints(eps) = &c.get(&k).unwrap().payload else {
            panic!()
        };
        assert_eq!(eps.endpoints.len(), 2);
        // One source may contribute several endpoints of a service at once.
        let both = vec![
            (k.clone(), ep("10.0.0.2", 80)),
            (k.clone(), ep("10.0.0.3", 80)),
        ];
        assert_eq!(c.set_source("reg/b", both), vec![k.clone()]);
        let Payload::Endpoints(eps) = &c.get(&k).unwrap().payload else {
            panic!()
        };
        assert_eq!(eps.endpoints.len(), 3);
        c.set_source("reg/b", vec![(k.clone(), ep("10.0.0.2", 80))]);
        // Re-applying the same content changes nothing.
        assert!(
            c.set_source("reg/b", vec![(k.clone(), ep("10.0.0.2", 80))])
                .is_empty()
        );
        // Removing b returns to a's content and a's version.
        assert_eq!(c.set_source("reg/b", vec![]), vec![k.clone()]);
        assert_eq!(c.get(&k).unwrap().version, v1);
        assert_eq!(c.set_source("reg/a", vec![]), vec![k.clone()]);
        assert!(c.get(&k).is_none());
    }
}
