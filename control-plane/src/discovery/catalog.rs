//! The proxy-facing resource table: what a proxy can subscribe to, computed from the store (and,
//! later, from endpoint sources).
//!
//! Every source record (a stored resource, or an endpoint source's batch) *contributes* entries
//! under discovery keys; an entry's payload is the merge of its contributions (the union of
//! endpoints for `ENDPOINTS`, the single contribution otherwise). Versions are content hashes, so
//! they survive control-plane restarts: a reconnecting proxy that holds the same content is sent
//! nothing.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use prost::Message;
use shoal_proto::v1::{self, discovery_resource::Payload};

/// A discovery key: resource type and name (e.g. `ROUTE backend.default`).
///
/// The name is an `Arc<str>`: every stream that subscribes to a key the catalog holds shares the
/// catalog's copy of the name ([`Catalog::intern`]), so 1,000 proxies subscribed to the same 150
/// keys keep one copy of each name, not 1,000.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// The resource type (`v1::ResourceType` as on the wire).
    pub ty: i32,
    /// The resource name.
    pub name: Arc<str>,
}

/// Builds a [`Key`].
pub fn key(ty: v1::ResourceType, name: impl Into<Arc<str>>) -> Key {
    Key {
        ty: ty as i32,
        name: name.into(),
    }
}

/// The wire form of a [`Key`].
pub fn wire_key(k: &Key) -> v1::ResourceKey {
    v1::ResourceKey {
        r#type: k.ty,
        name: k.name.to_string(),
    }
}

/// A map keyed by [`Key`]. foldhash, seeded per process, instead of SipHash: keys are hashed a few
/// times per change and subscriber on the push path.
pub type KeyMap<V> = HashMap<Key, V, foldhash::fast::RandomState>;
/// A set of [`Key`]s (see [`KeyMap`]).
pub type KeySet = HashSet<Key, foldhash::fast::RandomState>;

/// A resource version: a content hash, compared as a number and sent as 16 hex digits.
///
/// Two values are reserved (a content hash never takes them): [`NONE`] (nothing sent or held yet)
/// and [`REMOVED`] (sent as removed).
pub type Version = u64;

/// No version: nothing sent yet, or a held version this control plane cannot parse.
pub const NONE: Version = 0;
/// The resource was sent as removed (it does not exist).
pub const REMOVED: Version = 1;

/// The wire form of a version (`""` for [`NONE`] and [`REMOVED`]).
pub fn wire_version(v: Version) -> String {
    if v <= REMOVED {
        String::new()
    } else {
        format!("{v:016x}")
    }
}

/// A version as a proxy quotes it back in `Hello.held`; anything this control plane did not
/// produce is [`NONE`] (never equal to a current version, so the resource is sent again).
pub fn parse_version(s: &str) -> Version {
    match u64::from_str_radix(s, 16) {
        Ok(v) if s.len() == 16 && v > REMOVED => v,
        _ => NONE,
    }
}

/// The prefix of the catalog sources of stored resources (`store/<kind>/<namespace>/<name>`).
pub const STORE_PREFIX: &str = "store/";

/// What one source record says about one key.
#[derive(Debug, Clone, PartialEq)]
pub enum Contribution {
    /// The whole payload (services, policies, address bindings).
    Whole(Payload),
    /// One endpoint of a service's `ENDPOINTS` (registrations, endpoint sources).
    Endpoint(v1::Endpoint),
}

/// A merged entry.
///
/// Only the encoded form is kept (the payload is decoded on demand, [`Entry::payload`]): with a
/// Kubernetes cluster of 5,000 Services the catalog holds ~35,000 entries, and a decoded copy of
/// each beside its encoding and its contributions was a fifth of the control plane's memory.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Content hash of the payload.
    pub version: Version,
    /// The whole `DiscoveryResource` (key, version, payload), encoded once when the entry changes
    /// and shared by every stream that sends it (see `stream::Response`).
    pub encoded: Bytes,
}

impl Entry {
    /// What proxies receive, decoded from [`Self::encoded`] (`None` only if those bytes were not
    /// the catalog's own encoding).
    pub fn payload(&self) -> Option<Payload> {
        v1::DiscoveryResource::decode(self.encoded.clone())
            .ok()
            .and_then(|r| r.payload)
    }
}

/// What the sources say about one key: per source, sorted by name, its contributions (several
/// endpoints of one service from one source). A key has one or two sources in practice, so a
/// sorted vector with exact capacities: a `BTreeMap` allocates a node of eleven slots per key,
/// and a `Vec` grown by pushing keeps room for four contributions — with ~35,000 keys (5,000
/// Kubernetes Services) those two were 45 MiB of room for one contribution each.
type Sources = Vec<(Arc<str>, Box<[Contribution]>)>;

/// The table of entries and the contributions they were merged from.
#[derive(Debug, Default)]
pub struct Catalog {
    /// Per key, per source: what the source says.
    contributions: KeyMap<Sources>,
    /// The keys each source contributes to (the source's name shared with `contributions`).
    by_source: HashMap<Arc<str>, Box<[Key]>>,
    entries: KeyMap<Entry>,
}

impl Catalog {
    /// The current entry for `k`.
    pub fn get(&self, k: &Key) -> Option<&Entry> {
        self.entries.get(k)
    }

    /// `k` with the catalog's own copy of its name when the catalog has an entry for it (see
    /// [`Key`]); `k` itself otherwise.
    pub fn intern(&self, k: Key) -> Key {
        match self.entries.get_key_value(&k) {
            Some((shared, _)) => shared.clone(),
            None => k,
        }
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
            .map(|s| s.to_string())
            .collect()
    }

    /// Replaces everything `source` contributes; returns the keys whose entry changed.
    pub fn set_source(
        &mut self,
        source: &str,
        contributions: Vec<(Key, Contribution)>,
    ) -> Vec<Key> {
        let mut touched: HashSet<Key> = HashSet::new();
        let name: Arc<str> = match self.by_source.remove_entry(source) {
            Some((name, old)) => {
                for k in old {
                    if let Some(list) = self.contributions.get_mut(&k) {
                        list.retain(|(s, _)| **s != *source);
                        if list.is_empty() {
                            self.contributions.remove(&k);
                        }
                    }
                    touched.insert(k);
                }
                name
            }
            None => source.into(),
        };
        // Grouped per key, in the order the keys first appear.
        let mut grouped: Vec<(Key, Vec<Contribution>)> = Vec::new();
        let mut index: KeyMap<usize> = KeyMap::default();
        for (k, c) in contributions {
            match index.get(&k) {
                Some(&i) => grouped[i].1.push(c),
                None => {
                    index.insert(k.clone(), grouped.len());
                    grouped.push((k, vec![c]));
                }
            }
        }
        let mut keys = Vec::with_capacity(grouped.len());
        for (k, c) in grouped {
            let list = self.contributions.entry(k.clone()).or_default();
            let at = list.partition_point(|(s, _)| **s < *name);
            list.reserve_exact(1);
            list.insert(at, (name.clone(), c.into_boxed_slice()));
            touched.insert(k.clone());
            keys.push(k);
        }
        if !keys.is_empty() {
            self.by_source.insert(name, keys.into_boxed_slice());
        }
        let mut changed = Vec::new();
        for k in touched {
            let merged = self.contributions.get(&k).and_then(|c| merge(&k, c));
            // Versions are content hashes: equal versions, equal content.
            let entry = merged.map(|payload| encode(&k, &payload));
            let differs = match (&entry, self.entries.get(&k)) {
                (Some(new), Some(old)) => new.version != old.version,
                (None, None) => false,
                _ => true,
            };
            if !differs {
                continue;
            }
            match entry {
                Some(entry) => {
                    self.entries.insert(k.clone(), entry);
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

fn merge(k: &Key, contributions: &Sources) -> Option<Payload> {
    if k.ty == v1::ResourceType::Endpoints as i32 {
        let mut endpoints: Vec<v1::Endpoint> = (contributions.iter())
            .flat_map(|(_, c)| c.iter())
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
            service: k.name.to_string(),
            endpoints,
        }));
    }
    // One contribution per key from the store (one policy per service); endpoint sources may define a
    // service (Kubernetes) that the store defines too: the store's wins, being the operator's explicit
    // configuration. Otherwise the lowest source wins.
    let whole = |c: &Contribution| match c {
        Contribution::Whole(p) => Some(p.clone()),
        Contribution::Endpoint(_) => None,
    };
    let mut stored = (contributions.iter())
        .filter(|(source, _)| source.starts_with(STORE_PREFIX))
        .flat_map(|(_, c)| c.iter());
    stored.find_map(whole).or_else(|| {
        (contributions.iter())
            .flat_map(|(_, c)| c.iter())
            .find_map(whole)
    })
}

/// Encodes `payload` once: its version is a stable hash of the encoding, and the encoded
/// `DiscoveryResource` is kept for every stream that sends it.
///
/// prost writes a message's fields in field-number order, and a message's encoding is the
/// concatenation of its fields' encodings: `key` (1) and `version` (2) then the `payload` oneof
/// (10–19) is exactly the encoding of the whole `DiscoveryResource`, so the payload is encoded
/// once, for the hash and for the wire.
fn encode(k: &Key, payload: &Payload) -> Entry {
    // The same bytes as a `DiscoveryResource` with only its payload set.
    let mut body = Vec::with_capacity(payload.encoded_len());
    payload.encode(&mut body);
    // DefaultHasher::new() has fixed keys: the same content gives the same version in every run
    // (the same value as before versions were numbers, so proxies keep their held versions).
    let mut h = std::hash::DefaultHasher::new();
    body.hash(&mut h);
    let version = h.finish().max(REMOVED + 1);
    let head = v1::DiscoveryResource {
        key: Some(wire_key(k)),
        version: wire_version(version),
        payload: None,
    };
    let mut encoded = Vec::with_capacity(head.encoded_len() + body.len());
    head.encode_raw(&mut encoded);
    encoded.extend_from_slice(&body);
    Entry {
        version,
        encoded: Bytes::from(encoded),
    }
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
        let v1 = c.get(&k).unwrap().version;
        assert_eq!(
            c.set_source("reg/b", vec![(k.clone(), ep("10.0.0.2", 80))]),
            vec![k.clone()]
        );
        let Payload::Endpoints(eps) = &c.get(&k).unwrap().payload().unwrap() else {
            panic!()
        };
        assert_eq!(eps.endpoints.len(), 2);
        // One source may contribute several endpoints of a service at once.
        let both = vec![
            (k.clone(), ep("10.0.0.2", 80)),
            (k.clone(), ep("10.0.0.3", 80)),
        ];
        assert_eq!(c.set_source("reg/b", both), vec![k.clone()]);
        let Payload::Endpoints(eps) = &c.get(&k).unwrap().payload().unwrap() else {
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

    #[test]
    fn a_stored_resource_wins_over_an_endpoint_source_defining_the_same_key() {
        let service = |port: u32| {
            Contribution::Whole(Payload::Service(v1::Service {
                name: "web".into(),
                namespace: "default".into(),
                ports: vec![v1::ServicePort {
                    port,
                    ..Default::default()
                }],
                ..Default::default()
            }))
        };
        let mut c = Catalog::default();
        let k = key(v1::ResourceType::Service, "web.default");
        // "kubernetes-service/..." sorts before "store/...": precedence is not the name order.
        c.set_source(
            "kubernetes-service/web.default",
            vec![(k.clone(), service(80))],
        );
        c.set_source(
            "store/service/default/web",
            vec![(k.clone(), service(8080))],
        );
        let port = |c: &Catalog| match &c.get(&k).unwrap().payload().unwrap() {
            Payload::Service(s) => s.ports[0].port,
            other => panic!("{other:?}"),
        };
        assert_eq!(port(&c), 8080);
        c.set_source("store/service/default/web", vec![]);
        assert_eq!(port(&c), 80);
    }

    #[test]
    fn the_lowest_source_wins_and_a_source_replaced_keeps_its_place() {
        let binding = |service: &str| {
            Contribution::Whole(Payload::Address(v1::AddressBinding {
                address: "10.0.0.1:80".into(),
                service: service.into(),
                service_port: 80,
            }))
        };
        let service = |c: &Catalog, k: &Key| match c.get(k).unwrap().payload().unwrap() {
            Payload::Address(b) => b.service,
            other => panic!("{other:?}"),
        };
        let mut c = Catalog::default();
        let k = key(v1::ResourceType::Address, "10.0.0.1:80");
        c.set_source("b", vec![(k.clone(), binding("from-b"))]);
        c.set_source("c", vec![(k.clone(), binding("from-c"))]);
        assert_eq!(service(&c, &k), "from-b");
        c.set_source("a", vec![(k.clone(), binding("from-a"))]);
        assert_eq!(service(&c, &k), "from-a");
        // Replaced, a source keeps its rank; withdrawn, the next one wins.
        assert_eq!(
            c.set_source("a", vec![(k.clone(), binding("from-a2"))]),
            vec![k.clone()]
        );
        assert_eq!(service(&c, &k), "from-a2");
        c.set_source("a", vec![]);
        assert_eq!(service(&c, &k), "from-b");
        c.set_source("b", vec![]);
        c.set_source("c", vec![]);
        assert!(c.get(&k).is_none());
        assert!(c.contributions.is_empty() && c.by_source.is_empty());
    }

    #[test]
    fn encoded_entry_is_the_whole_resource() {
        let mut c = Catalog::default();
        let k = key(v1::ResourceType::Endpoints, "web.default");
        c.set_source("reg/a", vec![(k.clone(), ep("10.0.0.1", 80))]);
        let e = c.get(&k).unwrap();
        let decoded = v1::DiscoveryResource::decode(e.encoded.clone()).unwrap();
        assert_eq!(
            decoded,
            v1::DiscoveryResource {
                key: Some(wire_key(&k)),
                version: wire_version(e.version),
                payload: e.payload(),
            }
        );
        assert_eq!(decoded.version.len(), 16);
        assert_eq!(parse_version(&decoded.version), e.version);
        assert_eq!(parse_version(""), NONE);
        assert_eq!(parse_version("not-a-version"), NONE);
        // The catalog's copy of the name is shared.
        let interned = c.intern(key(v1::ResourceType::Endpoints, "web.default"));
        assert!(Arc::ptr_eq(
            &interned.name,
            &c.entries.get_key_value(&k).unwrap().0.name
        ));
    }
}
