//! [`Peer`]: one client as the server sees it, its details and its tags.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};

use serde_json::Value;
use veltix_proto::{ConnectionStats, Hub, Identity, PeerHello, PeerId, Tags};
use veltix_tls::TlsInfo;

use crate::lock;

use super::Inner;

/// One client of a [`Server`](super::Server): its id, address, and the server's state for
/// it (tags, hello, counters). Cheap to clone; compares by connection.
#[derive(Clone)]
#[doc(alias = "ClientInfo")]
pub struct Peer {
    pub(super) id: PeerId,
    pub(super) addr: SocketAddr,
    pub(super) hello: Option<Arc<PeerHello>>,
    /// What its TLS handshake negotiated (TLS servers only).
    pub(super) tls: Option<Arc<TlsInfo>>,
    pub(super) server: Weak<Inner>,
}

/// Veltix's name for a [`Peer`].
pub type ClientInfo = Peer;

impl PartialEq for Peer {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && Weak::ptr_eq(&self.server, &other.server)
    }
}
impl Eq for Peer {}
impl Hash for Peer {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.id.hash(state);
    }
}
impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id.as_u64())
            .field("addr", &self.addr)
            .finish()
    }
}

impl Peer {
    /// What its TLS handshake negotiated (protocol, cipher suite, ALPN,
    /// client identity); `None` on a plaintext server.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        self.tls.as_deref().cloned()
    }
    /// The identity of its verified client certificate (mutual TLS): the
    /// certificate's subject CN, else its first DNS name
    /// ([`veltix_tls::peer_identity`]). `None` without a client certificate.
    pub fn tls_identity(&self) -> Option<String> {
        self.tls.as_deref()?.peer_identity.clone()
    }
    fn with_hub<T>(&self, f: impl FnOnce(&mut Hub, PeerId) -> T) -> Option<T> {
        let inner = self.server.upgrade()?;
        let mut st = lock(&inner.state);
        Some(f(&mut st.hub, self.id))
    }
    fn with_tags<T>(&self, f: impl FnOnce(&mut Tags) -> T) -> Option<T> {
        self.with_hub(|h, id| h.tags_mut(id).map(f)).flatten()
    }

    /// A number unique to this connection within its server.
    pub fn id(&self) -> u64 {
        self.id.as_u64()
    }
    /// The client's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The client's IP address.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
    /// The client's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// Whether the client is connected (handshake done, not closed).
    pub fn handshake_done(&self) -> bool {
        self.with_hub(|h, id| h.is_connected(id)).unwrap_or(false)
    }
    /// The client's hello (kept after the client is gone).
    pub fn hello(&self) -> Option<PeerHello> {
        self.hello.as_deref().cloned()
    }
    /// Who the client proved to be (authentication in the handshake, or a
    /// verified TLS client certificate); `None` for an anonymous peer. Kept
    /// after the client is gone.
    pub fn identity(&self) -> Option<Identity> {
        self.with_hub(|h, id| h.identity(id).cloned())
            .flatten()
            .or_else(|| self.hello().and_then(|h| h.negotiated.identity))
    }
    /// Counters of the connection.
    pub fn stats(&self) -> Option<ConnectionStats> {
        self.with_hub(|h, id| h.peer_stats(id)).flatten()
    }
    /// Adds a tag; `false` (and no change) if it exists or the peer is gone.
    pub fn add_tag(&self, name: &str, value: Value) -> bool {
        self.with_tags(|t| t.add_tag(name, value)).unwrap_or(false)
    }
    /// Sets a tag (overwriting).
    pub fn set_tag(&self, name: &str, value: Value) {
        self.with_tags(|t| t.set_tag(name, value));
    }
    /// A tag's value.
    pub fn get_tag(&self, name: &str) -> Option<Value> {
        self.with_tags(|t| t.get_tag(name).cloned()).flatten()
    }
    /// Whether the tag exists.
    pub fn has_tag(&self, name: &str) -> bool {
        self.with_tags(|t| t.has_tag(name)).unwrap_or(false)
    }
    /// Whether every one of these tags exists.
    pub fn has_all_tags(&self, names: &[&str]) -> bool {
        self.with_tags(|t| t.has_all_tags(names.iter().copied()))
            .unwrap_or(false)
    }
    /// Whether any of these tags exists.
    pub fn has_any_tags(&self, names: &[&str]) -> bool {
        self.with_tags(|t| t.has_any_tags(names.iter().copied()))
            .unwrap_or(false)
    }
    /// Removes a tag; `false` if it did not exist.
    pub fn remove_tag(&self, name: &str) -> bool {
        self.with_tags(|t| t.remove_tag(name)).unwrap_or(false)
    }
    /// Removes every tag.
    pub fn clear_tags(&self) {
        self.with_tags(Tags::clear_tags);
    }
    /// A copy of the tags (empty once the peer is gone).
    pub fn tags(&self) -> Tags {
        self.with_tags(|t| t.clone()).unwrap_or_default()
    }
}
