//! Pieces every kind's YAML uses: metadata, enums as lowercase names, "leave out the default" helpers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_proto::v1;

/// `metadata`: name (required), namespace (default `default`), labels. `resource_version` is printed by
/// `get` and ignored by `apply`, so printed documents can be applied again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    /// The resource's name.
    pub name: String,
    /// Its namespace; empty means `default`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The version the server gave it; ignored on apply.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub resource_version: u64,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl Meta {
    pub(super) fn into_wire(self) -> v1::Metadata {
        v1::Metadata {
            name: self.name,
            namespace: self.namespace,
            resource_version: 0,
            labels: self.labels.into_iter().collect(),
        }
    }

    pub(super) fn from_wire(wire: v1::Metadata) -> Self {
        Self {
            name: wire.name,
            namespace: wire.namespace,
            resource_version: wire.resource_version,
            labels: wire.labels.into_iter().collect(),
        }
    }
}

/// Whether a number is zero, the wire's "not set": left out of printed YAML.
pub(super) fn is_zero<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// Defines a YAML enum whose lowercase snake_case names map to a wire enum's variants of the same name; an
/// unset field (`None`) is the wire's `UNSPECIFIED` (0).
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident => $wire:ty { $($variant:ident),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub(super) enum $name { $($variant),* }

        impl $name {
            /// The wire number; `None` is `UNSPECIFIED`.
            pub(super) fn to_wire(value: Option<Self>) -> i32 {
                match value {
                    None => 0,
                    $(Some(Self::$variant) => <$wire>::$variant as i32,)*
                }
            }

            /// The YAML name of a wire number; `None` for `UNSPECIFIED` and numbers this build does not know.
            pub(super) fn from_wire(value: i32) -> Option<Self> {
                match <$wire>::try_from(value).ok()? {
                    $(<$wire>::$variant => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }
    };
}
pub(super) use wire_enum;

/// Defines a YAML struct with exactly a wire message's fields (scalars only), every field optional (left out:
/// the wire default) and left out of printed YAML when it has the default; with conversions both ways.
macro_rules! plain_message {
    ($(#[$doc:meta])* $name:ident => $wire:ty { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
        #[serde(default, deny_unknown_fields)]
        pub(super) struct $name {
            $(#[serde(skip_serializing_if = "super::common::is_zero")] $field: $ty,)*
        }

        impl From<$name> for $wire {
            fn from(yaml: $name) -> Self {
                Self { $($field: yaml.$field,)* }
            }
        }

        impl From<&$wire> for $name {
            fn from(wire: &$wire) -> Self {
                Self { $($field: wire.$field.clone(),)* }
            }
        }
    };
}
pub(super) use plain_message;
