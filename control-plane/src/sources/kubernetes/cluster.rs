//! What the source knows of the cluster: one [`Table`] per watched kind (projected by `translate`), and the
//! indexes that tell which Services an event touches.
//!
//! A relist (at start, and after a watch answered 410 Gone) is collected on the side while the table keeps
//! what it had: the catalog keeps serving the last known endpoints until the list is complete, and then only
//! the difference is applied (`Table::apply`, [`Event::RelistDone`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::translate::{ObjKey, Slice, endpoints};
use crate::model::{self, Endpoint};

/// What a watcher says about one kind, projected.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Event<T> {
    /// A (re)list starts: the objects listed next replace the table when it is done.
    Relist,
    /// An object of the list in progress; `None`: it exists but projects to nothing.
    Listed(ObjKey, Option<T>),
    /// The list is complete: objects it did not name are gone.
    RelistDone,
    /// An object was added or changed; `None`: it projects to nothing (any earlier projection goes).
    Apply(ObjKey, Option<T>),
    /// An object was deleted.
    Delete(ObjKey),
}

impl<T> Event<T> {
    /// Whether this completes a list.
    pub(crate) fn ends_list(&self) -> bool {
        matches!(self, Self::RelistDone)
    }
}

/// One object whose projection changed: before and after.
type Diff<T> = (ObjKey, Option<T>, Option<T>);

/// The objects of one kind, as last listed and watched.
#[derive(Debug)]
pub(crate) struct Table<T> {
    current: HashMap<ObjKey, T>,
    /// The list in progress, if any.
    relist: Option<HashMap<ObjKey, T>>,
    /// Whether a first list completed.
    synced: bool,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            current: HashMap::new(),
            relist: None,
            synced: false,
        }
    }
}

impl<T: Clone + PartialEq> Table<T> {
    /// Applies `event`; returns the objects whose projection changed.
    pub(crate) fn apply(&mut self, event: Event<T>) -> Vec<Diff<T>> {
        match event {
            Event::Relist => {
                self.relist = Some(HashMap::new());
                Vec::new()
            }
            Event::Listed(key, value) => {
                let relist = self.relist.get_or_insert_with(HashMap::new);
                match value {
                    Some(v) => relist.insert(key, v),
                    None => relist.remove(&key),
                };
                Vec::new()
            }
            Event::RelistDone => {
                let listed = self.relist.take().unwrap_or_default();
                self.synced = true;
                let mut diffs = Vec::new();
                let gone: Vec<ObjKey> = (self.current.keys())
                    .filter(|k| !listed.contains_key(*k))
                    .cloned()
                    .collect();
                for key in gone {
                    let old = self.current.remove(&key);
                    diffs.push((key, old, None));
                }
                for (key, new) in listed {
                    let old = self.current.insert(key.clone(), new.clone());
                    if old.as_ref() != Some(&new) {
                        diffs.push((key, old, Some(new)));
                    }
                }
                diffs
            }
            Event::Apply(key, value) => {
                let old = match &value {
                    Some(v) => self.current.insert(key.clone(), v.clone()),
                    None => self.current.remove(&key),
                };
                if old == value {
                    return Vec::new();
                }
                vec![(key, old, value)]
            }
            Event::Delete(key) => match self.current.remove(&key) {
                Some(old) => vec![(key, Some(old), None)],
                None => Vec::new(),
            },
        }
    }

    /// The object under `key`.
    pub(crate) fn get(&self, key: &ObjKey) -> Option<&T> {
        self.current.get(key)
    }

    /// Whether a first list completed.
    pub(crate) fn synced(&self) -> bool {
        self.synced
    }

    /// Every object, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&ObjKey, &T)> {
        self.current.iter()
    }

    /// Number of objects.
    pub(crate) fn len(&self) -> usize {
        self.current.len()
    }
}

/// Services, EndpointSlices and pods, joined per Service.
#[derive(Debug, Default)]
pub(crate) struct Cluster {
    /// Services Shoal serves.
    pub(crate) services: Table<model::Service>,
    /// EndpointSlices, projected.
    pub(crate) slices: Table<Slice>,
    /// Pods with Shoal's sidecar: their endpoints' SPIFFE id.
    pub(crate) pods: Table<String>,
    /// Per Service (namespace, name), the names of its slices, sorted.
    slices_of: HashMap<ObjKey, Vec<String>>,
    /// Per pod, the Services (in the pod's namespace) whose slices name it, with how many slice
    /// endpoints do. A small vector, not a map: a pod backs one or two Services, and a tree node per
    /// pod was 11 MiB for 20,000 pods.
    services_of_pod: HashMap<ObjKey, Vec<(String, u32)>>,
}

impl Cluster {
    /// Whether every kind completed its first list: nothing is published before, so proxies never see a
    /// service's endpoints without the identities its pods give them.
    pub(crate) fn synced(&self) -> bool {
        self.services.synced() && self.slices.synced() && self.pods.synced()
    }

    /// Applies a Service event; returns the Services it touches.
    pub(crate) fn service_event(&mut self, event: Event<model::Service>) -> BTreeSet<ObjKey> {
        self.services
            .apply(event)
            .into_iter()
            .map(|(k, _, _)| k)
            .collect()
    }

    /// Applies an EndpointSlice event; returns the Services it touches.
    pub(crate) fn slice_event(&mut self, event: Event<Slice>) -> BTreeSet<ObjKey> {
        let mut touched = BTreeSet::new();
        for ((namespace, name), old, new) in self.slices.apply(event) {
            for (slice, add) in [(old, false), (new, true)] {
                let Some(slice) = slice else { continue };
                let service = (namespace.clone(), slice.service.clone());
                let names = self.slices_of.entry(service.clone()).or_default();
                match (names.binary_search(&name), add) {
                    (Err(at), true) => names.insert(at, name.clone()),
                    (Ok(at), false) => {
                        names.remove(at);
                        if names.is_empty() {
                            self.slices_of.remove(&service);
                        }
                    }
                    _ => {}
                }
                for pod in slice.endpoints.iter().filter_map(|e| e.pod.clone()) {
                    let pod = (namespace.clone(), pod);
                    let services = self.services_of_pod.entry(pod.clone()).or_default();
                    let at = services.iter().position(|(s, _)| *s == slice.service);
                    match (at, add) {
                        (Some(at), true) => services[at].1 += 1,
                        (None, true) => services.push((slice.service.clone(), 1)),
                        (Some(at), false) => {
                            services[at].1 -= 1;
                            if services[at].1 == 0 {
                                services.swap_remove(at);
                            }
                        }
                        (None, false) => {}
                    }
                    if services.is_empty() {
                        self.services_of_pod.remove(&pod);
                    }
                }
                touched.insert(service);
            }
        }
        touched
    }

    /// Applies a pod event; returns the Services whose slices name a pod whose identity changed.
    pub(crate) fn pod_event(&mut self, event: Event<String>) -> BTreeSet<ObjKey> {
        let mut touched = BTreeSet::new();
        for (pod, _, _) in self.pods.apply(event) {
            if let Some(services) = self.services_of_pod.get(&pod) {
                let (namespace, _) = &pod;
                touched.extend(services.iter().map(|(s, _)| (namespace.clone(), s.clone())));
            }
        }
        touched
    }

    /// The Services served, by qualified name (what policies are checked against).
    pub(crate) fn service_definitions(&self) -> BTreeMap<String, model::Service> {
        (self.services.iter())
            .map(|(_, s)| (s.qualified().to_string(), s.clone()))
            .collect()
    }

    /// Every Service with something to publish (a Service object, or slices).
    pub(crate) fn all_services(&self) -> BTreeSet<ObjKey> {
        let mut all: BTreeSet<ObjKey> = self.services.current.keys().cloned().collect();
        all.extend(self.slices_of.keys().cloned());
        all
    }

    /// What to publish for the Service `key`: the Service and its endpoints, or `None` when there is no such
    /// Service (slices whose Service is unknown or not served wait for it).
    pub(crate) fn view(&self, key: &ObjKey) -> Option<(&model::Service, Vec<Endpoint>)> {
        let service = self.services.get(key)?;
        let (namespace, _) = key;
        let slices = (self.slices_of.get(key).into_iter().flatten())
            .filter_map(|name| self.slices.get(&(namespace.clone(), name.clone())));
        let identity = |pod: &str| self.pods.get(&(namespace.clone(), pod.to_owned())).cloned();
        Some((service, endpoints(service, slices, identity)))
    }
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
