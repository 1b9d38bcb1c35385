//! Server-side pieces: the [`Acceptor`] that enforces `max_connection` and
//! hands out server connections, and per-peer [`Tags`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;

use crate::connection::{Connection, ConnectionConfig};
use crate::correlation::IdAllocator;
use crate::frame::{EncodedFrame, MessageType, PayloadTooLarge};
use crate::handshake::{encode_rejection, SERVER_FULL};

/// A refused connection: write [`bytes`](Self::bytes) to the socket, then close it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The reason given to the client (`server_full`).
    pub reason: String,
    /// The handshake message carrying it (`{"error": "server_full"}`).
    pub bytes: Bytes,
}

/// Admission control for a server: counts live connections (handshaking ones
/// included, as Veltix does) and refuses new ones beyond `max_connections`.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Instant;
/// use veltix_proto::{Acceptor, ConnectionConfig};
///
/// let mut acceptor = Acceptor::new(Arc::new(ConnectionConfig::default()), Some(1));
/// let now = Instant::now();
/// let _first = acceptor.accept(now).expect("room for one");
/// let refused = acceptor.accept(now).unwrap_err();
/// assert_eq!(&refused.bytes[2..], br#"{"error": "server_full"}"#);
/// acceptor.release(); // the first connection ended
/// assert!(acceptor.accept(now).is_ok());
/// ```
#[derive(Debug)]
pub struct Acceptor {
    config: Arc<ConnectionConfig>,
    max_connections: Option<usize>,
    live: usize,
    broadcast_ids: IdAllocator,
}

impl Acceptor {
    /// An acceptor; `None` means unlimited (Veltix's `max_connection=-1`).
    pub fn new(config: Arc<ConnectionConfig>, max_connections: Option<usize>) -> Self {
        Acceptor {
            broadcast_ids: IdAllocator::server(config.id_window),
            config,
            max_connections,
            live: 0,
        }
    }

    /// The configuration given to every accepted connection.
    pub fn config(&self) -> &Arc<ConnectionConfig> {
        &self.config
    }

    /// Connections accepted and not yet released.
    pub fn live(&self) -> usize {
        self.live
    }

    /// Whether the next `accept` would be refused.
    pub fn is_full(&self) -> bool {
        self.max_connections.is_some_and(|m| self.live >= m)
    }

    /// A transport was accepted at `now`: a new server [`Connection`] (its
    /// hello already queued), or the rejection to send before closing.
    ///
    /// # Errors
    /// [`Rejection`] when `max_connections` connections are live.
    pub fn accept(&mut self, now: Instant) -> Result<Connection, Rejection> {
        if self.is_full() {
            tracing::debug!(live = self.live, "refusing connection: server full");
            return Err(Rejection {
                reason: SERVER_FULL.to_owned(),
                bytes: encode_rejection(SERVER_FULL),
            });
        }
        self.live += 1;
        Ok(Connection::server(self.config.clone(), now))
    }

    /// A connection returned by `accept` has ended (whatever its state).
    pub fn release(&mut self) {
        self.live = self.live.saturating_sub(1);
    }

    /// Encodes one frame for a broadcast, with one id from the server's
    /// window shared by every copy (as Veltix does). Queue it on each
    /// connection with [`Connection::send_encoded`].
    ///
    /// # Errors
    /// [`PayloadTooLarge`] when the payload exceeds the u32 length field.
    pub fn broadcast_frame(
        &mut self,
        message_type: MessageType,
        payload: &[u8],
    ) -> Result<EncodedFrame, PayloadTooLarge> {
        let id = self.broadcast_ids.allocate(|_| false).unwrap_or(0);
        EncodedFrame::new(message_type, id, payload)
    }
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

/// [`Tags`] behind a lock, for a peer handle shared between threads or
/// tasks (both drivers' `ClientInfo`/`Peer` expose one through `tags()`).
///
/// ```
/// use serde_json::json;
/// use veltix_proto::SharedTags;
/// let tags = SharedTags::default();
/// assert!(tags.add_tag("room", json!("lobby")));
/// assert_eq!(tags.get_tag("room"), Some(json!("lobby")));
/// assert!(tags.matches("room", None));
/// ```
#[derive(Debug, Default)]
pub struct SharedTags(Mutex<Tags>);

impl SharedTags {
    fn with<R>(&self, f: impl FnOnce(&mut Tags) -> R) -> R {
        // No code runs under this lock but the `Tags` methods below, which
        // cannot leave the map half-updated: poisoning carries no meaning.
        f(&mut self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
    /// Adds a tag; `false` (and no change) if it exists.
    pub fn add_tag(&self, name: &str, value: Value) -> bool {
        self.with(|t| t.add_tag(name, value))
    }
    /// Creates or overwrites a tag.
    pub fn set_tag(&self, name: &str, value: Value) {
        self.with(|t| t.set_tag(name, value));
    }
    /// A tag's value.
    pub fn get_tag(&self, name: &str) -> Option<Value> {
        self.with(|t| t.get_tag(name).cloned())
    }
    /// Whether the tag exists.
    pub fn has_tag(&self, name: &str) -> bool {
        self.with(|t| t.has_tag(name))
    }
    /// Whether every tag exists.
    pub fn has_all_tags(&self, names: &[&str]) -> bool {
        self.with(|t| t.has_all_tags(names.iter().copied()))
    }
    /// Whether any tag exists.
    pub fn has_any_tags(&self, names: &[&str]) -> bool {
        self.with(|t| t.has_any_tags(names.iter().copied()))
    }
    /// Removes a tag; `false` if absent.
    pub fn remove_tag(&self, name: &str) -> bool {
        self.with(|t| t.remove_tag(name))
    }
    /// Removes every tag.
    pub fn clear_tags(&self) {
        self.with(Tags::clear_tags);
    }
    /// A copy of all tags.
    pub fn snapshot(&self) -> Tags {
        self.with(|t| t.clone())
    }
    /// Veltix's `get_clients_by_tag` rule (see [`Tags::matches`]).
    pub fn matches(&self, name: &str, value: Option<&Value>) -> bool {
        self.with(|t| t.matches(name, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcast_ids_come_from_the_server_window() {
        let mut a = Acceptor::new(Arc::new(ConnectionConfig::default()), None);
        let f1 = a.broadcast_frame(MessageType(300), b"x").unwrap();
        let f2 = a.broadcast_frame(MessageType(300), b"x").unwrap();
        assert_eq!((f1.request_id(), f2.request_id()), (32_768, 32_769));
        assert!(!a.is_full());
    }
}
