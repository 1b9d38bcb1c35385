//! [`Peer`]: one client as the server sees it, its details and its tags.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Weak};

use serde_json::Value;
use veltix_proto::{ConnectionStats, Hub, Identity, PeerHello, PeerId, Tags};
use veltix_tls::TlsInfo;

use crate::pool::lock;

use super::Shared;

/// One client as the server sees it (Veltix's `ClientInfo`): the core's
/// [`PeerId`] and a weak reference to the server. Cheap to clone; equal
/// handles name the same connection of the same server.
#[doc(alias = "ClientInfo")]
#[derive(Clone)]
pub struct Peer {
    pub(super) id: PeerId,
    pub(super) addr: SocketAddr,
    /// The hello seen when the handle was made (kept after the peer left).
    pub(super) hello: Option<Arc<PeerHello>>,
    /// What its TLS handshake negotiated (TLS servers only).
    pub(super) tls: Option<Arc<TlsInfo>>,
    pub(super) server: Weak<Shared>,
}

/// Veltix's name for a [`Peer`].
pub type ClientInfo = Peer;

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("id", &self.id)
            .field("addr", &self.addr)
            .finish()
    }
}

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

impl Peer {
    fn with_hub<T>(&self, f: impl FnOnce(&mut Hub) -> T) -> Option<T> {
        let shared = self.server.upgrade()?;
        let mut g = lock(&shared.core);
        Some(f(&mut g.hub))
    }
    /// A number unique to this connection within its server (the core's
    /// [`PeerId::as_u64`]).
    pub fn id(&self) -> u64 {
        self.id.as_u64()
    }
    /// The peer's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
    /// The peer's IP.
    pub fn ip(&self) -> IpAddr {
        self.addr.ip()
    }
    /// The peer's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }
    /// Whether the peer finished its handshake and is still connected.
    pub fn handshake_done(&self) -> bool {
        self.with_hub(|h| h.is_connected(self.id)).unwrap_or(false)
    }
    /// Its hello (`v`, `pv`, `meta`): once it connected (still known after
    /// it left, for handles made while it was connected).
    pub fn hello(&self) -> Option<PeerHello> {
        self.with_hub(|h| h.peer_hello(self.id).cloned())
            .flatten()
            .or_else(|| self.hello.as_deref().cloned())
    }
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
    /// Who the client proved to be (authentication in the handshake, or a
    /// verified TLS client certificate); `None` for an anonymous peer. Kept
    /// after the client is gone.
    pub fn identity(&self) -> Option<Identity> {
        self.with_hub(|h| h.identity(self.id).cloned())
            .flatten()
            .or_else(|| self.hello().and_then(|h| h.negotiated.identity))
    }
    /// Counters of its connection (frames, bytes, counted drops), while open.
    pub fn stats(&self) -> Option<ConnectionStats> {
        self.with_hub(|h| h.peer_stats(self.id)).flatten()
    }
    fn tags_mut<T>(&self, f: impl FnOnce(&mut Tags) -> T) -> Option<T> {
        self.with_hub(|h| h.tags_mut(self.id).map(f)).flatten()
    }
    /// Adds a tag; `false` if it exists (or the peer is gone).
    pub fn add_tag(&self, name: &str, value: Value) -> bool {
        self.tags_mut(|t| t.add_tag(name, value)).unwrap_or(false)
    }
    /// Sets a tag, replacing its value.
    pub fn set_tag(&self, name: &str, value: Value) {
        self.tags_mut(|t| t.set_tag(name, value));
    }
    /// A tag's value.
    pub fn get_tag(&self, name: &str) -> Option<Value> {
        self.tags_mut(|t| t.get_tag(name).cloned()).flatten()
    }
    /// Whether the tag is set.
    pub fn has_tag(&self, name: &str) -> bool {
        self.tags_mut(|t| t.has_tag(name)).unwrap_or(false)
    }
    /// Whether every one of these tags is set.
    pub fn has_all_tags(&self, names: &[&str]) -> bool {
        self.tags_mut(|t| t.has_all_tags(names.iter().copied()))
            .unwrap_or(false)
    }
    /// Whether any of these tags is set.
    pub fn has_any_tags(&self, names: &[&str]) -> bool {
        self.tags_mut(|t| t.has_any_tags(names.iter().copied()))
            .unwrap_or(false)
    }
    /// Removes a tag; `false` if it was not set.
    pub fn remove_tag(&self, name: &str) -> bool {
        self.tags_mut(|t| t.remove_tag(name)).unwrap_or(false)
    }
    /// Removes every tag.
    pub fn clear_tags(&self) {
        self.tags_mut(Tags::clear_tags);
    }
    /// A copy of its tags (empty once the peer is gone).
    pub fn tags(&self) -> Tags {
        self.tags_mut(|t| t.clone()).unwrap_or_default()
    }
}
