//! Server-side pieces used by the [`Hub`](crate::Hub): the [`Rejection`] of
//! a connection past `max_connection`, and per-peer [`Tags`].

use std::collections::BTreeMap;

use bytes::Bytes;
use serde_json::Value;

/// A refused connection: write [`bytes`](Self::bytes) to the socket, then close it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The reason given to the client (`server_full`).
    pub reason: String,
    /// The handshake message carrying it (`{"error": "server_full"}`).
    pub bytes: Bytes,
}

/// Per-peer tags (Veltix's `ClientInfo` tags): a string-keyed map of JSON
/// values that never travels on the wire. A tag "without a value" holds `Null`.
///
/// ```
/// use serde_json::json;
/// use veltix_proto::Tags;
/// let mut t = Tags::default();
/// assert!(t.add_tag("room", json!("lobby")));
/// assert!(!t.add_tag("room", json!("other")), "add does not overwrite");
/// t.set_tag("admin", json!(true));
/// assert!(t.has_all_tags(["room", "admin"]));
/// assert!(t.matches("room", Some(&json!("lobby"))));
/// assert!(t.matches("room", None));
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Tags(BTreeMap<String, Value>);

impl Tags {
    /// Adds a tag; `false` (and no change) if it exists.
    pub fn add_tag(&mut self, name: impl Into<String>, value: Value) -> bool {
        use std::collections::btree_map::Entry;
        match self.0.entry(name.into()) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(value);
                true
            }
        }
    }
    /// Creates or overwrites a tag.
    pub fn set_tag(&mut self, name: impl Into<String>, value: Value) {
        self.0.insert(name.into(), value);
    }
    /// A tag's value.
    pub fn get_tag(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }
    /// Whether the tag exists.
    pub fn has_tag(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    /// Whether every tag exists.
    pub fn has_all_tags<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> bool {
        names.into_iter().all(|n| self.has_tag(n))
    }
    /// Whether any tag exists.
    pub fn has_any_tags<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> bool {
        names.into_iter().any(|n| self.has_tag(n))
    }
    /// Removes a tag; `false` if absent.
    pub fn remove_tag(&mut self, name: &str) -> bool {
        self.0.remove(name).is_some()
    }
    /// Removes every tag.
    pub fn clear_tags(&mut self) {
        self.0.clear();
    }
    /// All tags.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
    /// Veltix's `get_clients_by_tag` rule: the tag exists and, when `value`
    /// is given, equals it.
    pub fn matches(&self, name: &str, value: Option<&Value>) -> bool {
        match (self.0.get(name), value) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(v), Some(want)) => v == want,
        }
    }
}
