//! Authentication in the handshake: SCRAM-SHA-256 and bearer tokens.
//!
//! Only peers that both opt in (through the handshake's `meta.caps`, see
//! [`handshake`](crate::handshake)) run these extra steps; a Python veltix
//! peer never does, and keeps working exactly as before against a server
//! that does not *require* authentication.
//!
//! * The server side is a [`ServerAuth`]: a [`CredentialStore`] the
//!   application implements (or the in-memory [`MemoryStore`]), a policy
//!   (required or optional) and the mechanisms offered.
//! * The client side is a [`ClientAuth`]: credentials, whether the server
//!   must prove itself (SCRAM's server signature), and the range of PBKDF2
//!   iteration counts it will compute (a hostile server must not make it
//!   burn CPU).
//! * The result is an [`Identity`] on both sides, in
//!   [`PeerHello::negotiated`](crate::PeerHello::negotiated).
//!
//! Failure closes the connection with one error for an unknown user and a
//! wrong password or token ([`HandshakeError::AuthenticationFailed`](crate::HandshakeError::AuthenticationFailed));
//! there is never a silent anonymous fallback.
//!
//! **Randomness.** The core has no ambient randomness: nonces come from a
//! ChaCha20 generator seeded through [`ServerAuth::seed`] / [`ClientAuth::seed`].
//! The drivers seed it from the operating system; a sans-IO user must seed
//! it (a simulation may use a fixed seed). An unseeded side fails closed:
//! it refuses to authenticate rather than use predictable nonces.
//!
//! ```
//! use veltix_proto::auth::{ClientAuth, MemoryStore, ScramCredential, ServerAuth};
//!
//! let store = MemoryStore::new();
//! // Salts must be random per user; fixed here for the example.
//! store.insert_user("alice", ScramCredential::derive("s3cret", b"per-user-salt-16", 4096));
//! store.insert_token("deploy-bot", "tok_0123456789abcdef");
//!
//! let server = ServerAuth::new(store).required(true);
//! server.seed([1; 32]);
//! let client = ClientAuth::scram("alice", "s3cret").require_server_auth(true);
//! client.seed([2; 32]);
//! ```

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, PoisonError};

use rand_chacha::ChaCha20Rng;
use rand_core::{RngCore, SeedableRng};
use subtle::ConstantTimeEq;

pub(crate) mod scram;
pub use scram::{BadVerifier, ScramCredential, MIN_ITERATIONS};

/// Who a peer proved to be.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Identity {
    /// The identity's name: the SCRAM user name, the name a token maps to,
    /// or a client certificate's subject.
    pub name: String,
    /// How it was proved.
    pub method: AuthMethod,
}

impl Identity {
    /// An identity proved by `method`.
    pub fn new(name: impl Into<String>, method: AuthMethod) -> Self {
        Identity {
            name: name.into(),
            method,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.method.as_str())
    }
}

/// An authentication method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuthMethod {
    /// SCRAM-SHA-256 (RFC 5802, RFC 7677): password, mutual.
    ScramSha256,
    /// A bearer token (service to service); does not authenticate the server.
    Bearer,
    /// A verified TLS client certificate (set by a driver, not negotiated).
    ClientCertificate,
}

impl AuthMethod {
    /// The name on the wire (`"SCRAM-SHA-256"`, `"BEARER"`).
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::ScramSha256 => "SCRAM-SHA-256",
            AuthMethod::Bearer => "BEARER",
            AuthMethod::ClientCertificate => "TLS-CLIENT-CERT",
        }
    }

    pub(crate) fn from_wire(s: &str) -> Option<Self> {
        match s {
            "SCRAM-SHA-256" => Some(AuthMethod::ScramSha256),
            "BEARER" => Some(AuthMethod::Bearer),
            _ => None,
        }
    }
}

/// Where a server looks up credentials. Implement it over your user
/// database; [`MemoryStore`] is an in-memory one.
///
/// Implementations should take about the same time whether or not a user
/// or token exists; the handshake itself runs the whole SCRAM exchange for
/// unknown users (with a stand-in salt) and fails them like a wrong password.
pub trait CredentialStore: Send + Sync {
    /// The SCRAM verifier of `user`, if there is one.
    fn scram_credential(&self, user: &str) -> Option<ScramCredential>;
    /// The identity name `token` grants, if any. Compare in constant time.
    fn verify_token(&self, token: &str) -> Option<String>;
}

/// An in-memory [`CredentialStore`]. Cheap to clone (shared); safe to
/// change while servers use it.
///
/// Tokens are kept as SHA-256 digests and compared in constant time, all
/// of them on every lookup.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<StoreInner>>,
}

#[derive(Default)]
struct StoreInner {
    users: std::collections::HashMap<String, ScramCredential>,
    tokens: Vec<([u8; 32], String)>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        f.debug_struct("MemoryStore")
            .field("users", &g.users.len())
            .field("tokens", &g.tokens.len())
            .finish()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds or replaces `user`'s verifier.
    pub fn insert_user(&self, user: impl Into<String>, credential: ScramCredential) {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.users.insert(user.into(), credential);
    }
    /// Removes `user`; true when it was there.
    pub fn remove_user(&self, user: &str) -> bool {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.users.remove(user).is_some()
    }
    /// Adds a token granting the identity `name`.
    pub fn insert_token(&self, name: impl Into<String>, token: &str) {
        let digest = scram::hmac(b"veltix token", &[token.as_bytes()]);
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.tokens.push((digest, name.into()));
    }
    /// Revokes every token granting `name`; returns how many.
    pub fn revoke_tokens(&self, name: &str) -> usize {
        let mut g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let before = g.tokens.len();
        g.tokens.retain(|(_, n)| n != name);
        before - g.tokens.len()
    }
}

impl CredentialStore for MemoryStore {
    fn scram_credential(&self, user: &str) -> Option<ScramCredential> {
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        g.users.get(user).cloned()
    }
    fn verify_token(&self, token: &str) -> Option<String> {
        let digest = scram::hmac(b"veltix token", &[token.as_bytes()]);
        let g = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let mut found = None;
        for (d, name) in &g.tokens {
            if bool::from(d.ct_eq(&digest)) && found.is_none() {
                found = Some(name.clone());
            }
        }
        found
    }
}

/// A seedable source of nonces, shared by the connections of one config.
#[derive(Clone, Default)]
struct Entropy(Arc<Mutex<Option<Seeded>>>);

/// The generator and the secret drawn from it first.
type Seeded = (ChaCha20Rng, [u8; 32]);

impl Entropy {
    fn seed(&self, seed: [u8; 32]) {
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if g.is_none() {
            let mut rng = ChaCha20Rng::from_seed(seed);
            let mut secret = [0u8; 32];
            rng.fill_bytes(&mut secret);
            *g = Some((rng, secret));
        }
    }
    fn is_seeded(&self) -> bool {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
    /// A fresh nonce (24 printable characters), or `None` when unseeded.
    fn nonce(&self) -> Option<String> {
        use base64::Engine as _;
        let mut g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let (rng, _) = g.as_mut()?;
        let mut b = [0u8; 18];
        rng.fill_bytes(&mut b);
        Some(base64::engine::general_purpose::STANDARD.encode(b))
    }
    fn secret(&self) -> Option<[u8; 32]> {
        let g = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        g.as_ref().map(|(_, s)| *s)
    }
}

/// A server's authentication policy and credentials.
///
/// Cheap to clone; clones share the store and the nonce generator.
#[derive(Clone)]
pub struct ServerAuth {
    store: Arc<dyn CredentialStore>,
    required: bool,
    methods: Vec<AuthMethod>,
    unknown_user_iterations: u32,
    entropy: Entropy,
}

impl fmt::Debug for ServerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerAuth")
            .field("required", &self.required)
            .field("methods", &self.methods)
            .field("seeded", &self.entropy.is_seeded())
            .finish_non_exhaustive()
    }
}

impl ServerAuth {
    /// Authentication against `store`: required, SCRAM-SHA-256 and bearer
    /// tokens offered. Seed it (drivers do) before use.
    pub fn new(store: impl CredentialStore + 'static) -> Self {
        Self::with_store(Arc::new(store))
    }
    /// Same, with a shared store.
    pub fn with_store(store: Arc<dyn CredentialStore>) -> Self {
        ServerAuth {
            store,
            required: true,
            methods: vec![AuthMethod::ScramSha256, AuthMethod::Bearer],
            unknown_user_iterations: MIN_ITERATIONS,
            entropy: Entropy::default(),
        }
    }
    /// Whether peers must authenticate (default true). When false,
    /// authentication is offered and peers without credentials (Python
    /// veltix among them) connect anonymously; a peer that tries and fails
    /// is still refused.
    pub fn required(mut self, required: bool) -> Self {
        self.required = required;
        self
    }
    /// The mechanisms offered, in the server's order of preference
    /// (default: SCRAM-SHA-256, then bearer tokens).
    pub fn methods(mut self, methods: &[AuthMethod]) -> Self {
        self.methods = methods
            .iter()
            .copied()
            .filter(|m| AuthMethod::from_wire(m.as_str()).is_some())
            .collect();
        self
    }
    /// The iteration count shown for users that do not exist (default
    /// 4096): make it what your real users have, so it gives nothing away.
    pub fn unknown_user_iterations(mut self, iterations: u32) -> Self {
        self.unknown_user_iterations = iterations.max(1);
        self
    }
    /// Seeds the nonce generator (only the first call counts). Drivers seed
    /// it from the operating system.
    pub fn seed(&self, seed: [u8; 32]) {
        self.entropy.seed(seed);
    }
    /// Whether authentication is required.
    pub fn is_required(&self) -> bool {
        self.required
    }
    /// The methods offered.
    pub fn offered(&self) -> &[AuthMethod] {
        &self.methods
    }
    pub(crate) fn store(&self) -> &dyn CredentialStore {
        &*self.store
    }
    pub(crate) fn nonce(&self) -> Option<String> {
        self.entropy.nonce()
    }
    pub(crate) fn secret(&self) -> Option<[u8; 32]> {
        self.entropy.secret()
    }
    pub(crate) fn unknown_iterations(&self) -> u32 {
        self.unknown_user_iterations
    }
}

/// What a client proves itself with.
#[derive(Clone)]
#[non_exhaustive]
pub enum Credentials {
    /// A SCRAM-SHA-256 user name and password.
    Scram {
        /// The user name.
        user: String,
        /// The password (never printed by `Debug`).
        password: String,
    },
    /// A bearer token (never printed by `Debug`).
    Bearer(String),
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::Scram { user, .. } => write!(f, "Scram {{ user: {user:?}, .. }}"),
            Credentials::Bearer(_) => f.write_str("Bearer(..)"),
        }
    }
}

/// The default range of PBKDF2 iteration counts a client accepts from a
/// server: 4 096 to 600 000 (OWASP's 2023 figure for PBKDF2-HMAC-SHA256).
pub const DEFAULT_ITERATION_RANGE: RangeInclusive<u32> = MIN_ITERATIONS..=600_000;

/// A client's credentials and policy.
///
/// Cheap to clone; clones share the nonce generator and a cache of the
/// salted password, so reconnects to the same server do not pay PBKDF2
/// again. The PBKDF2 cost of the first login is the server's iteration
/// count, which the client bounds with [`iterations`](Self::iterations).
#[derive(Clone)]
pub struct ClientAuth {
    credentials: Option<Credentials>,
    require_server_auth: bool,
    iterations: RangeInclusive<u32>,
    entropy: Entropy,
    cache: Arc<Mutex<Option<SaltedCache>>>,
}

type SaltedCache = (Vec<u8>, u32, [u8; 32]);

impl fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientAuth")
            .field("credentials", &self.credentials)
            .field("require_server_auth", &self.require_server_auth)
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ClientAuth {
    fn with(credentials: Option<Credentials>) -> Self {
        ClientAuth {
            credentials,
            require_server_auth: false,
            iterations: DEFAULT_ITERATION_RANGE,
            entropy: Entropy::default(),
            cache: Arc::default(),
        }
    }
    /// SCRAM-SHA-256 as `user` with `password`.
    pub fn scram(user: impl Into<String>, password: impl Into<String>) -> Self {
        Self::with(Some(Credentials::Scram {
            user: user.into(),
            password: password.into(),
        }))
    }
    /// A bearer token.
    pub fn bearer(token: impl Into<String>) -> Self {
        Self::with(Some(Credentials::Bearer(token.into())))
    }
    /// No credentials: only useful with [`require_server_auth`](Self::require_server_auth)
    /// off, to state "plain connections only" explicitly.
    pub fn anonymous() -> Self {
        Self::with(None)
    }
    /// Require the server to prove it knows our SCRAM verifier (mutual
    /// authentication). A server that does not offer SCRAM, or whose
    /// signature is wrong, fails the handshake. Default false: a plain
    /// server is accepted (without authenticating us).
    pub fn require_server_auth(mut self, require: bool) -> Self {
        self.require_server_auth = require;
        self
    }
    /// The PBKDF2 iteration counts we accept from a server (default
    /// [`DEFAULT_ITERATION_RANGE`]).
    pub fn iterations(mut self, range: RangeInclusive<u32>) -> Self {
        self.iterations = range;
        self
    }
    /// Seeds the nonce generator (only the first call counts). Drivers seed
    /// it from the operating system.
    pub fn seed(&self, seed: [u8; 32]) {
        self.entropy.seed(seed);
    }
    /// The credentials.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.credentials.as_ref()
    }
    /// Whether the server must authenticate itself.
    pub fn requires_server_auth(&self) -> bool {
        self.require_server_auth
    }
    pub(crate) fn iteration_range(&self) -> &RangeInclusive<u32> {
        &self.iterations
    }
    pub(crate) fn nonce(&self) -> Option<String> {
        self.entropy.nonce()
    }
    /// `SaltedPassword` for this salt and count, from the cache or PBKDF2.
    pub(crate) fn salted(&self, password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
        let mut g = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((s, i, k)) = g.as_ref() {
            if s == salt && *i == iterations {
                return *k;
            }
        }
        let k = scram::salted_password(password, salt, iterations);
        *g = Some((salt.to_vec(), iterations, k));
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_exactly() {
        let s = MemoryStore::new();
        s.insert_token("bot", "abc");
        assert_eq!(s.verify_token("abc").as_deref(), Some("bot"));
        assert_eq!(s.verify_token("abd"), None);
        assert_eq!(s.verify_token(""), None);
        assert_eq!(s.revoke_tokens("bot"), 1);
        assert_eq!(s.verify_token("abc"), None);
    }

    #[test]
    fn unseeded_gives_no_nonce_and_seeding_is_once() {
        let a = ClientAuth::scram("u", "p");
        assert!(a.nonce().is_none());
        a.seed([1; 32]);
        let n1 = a.nonce().unwrap();
        let b = ClientAuth::scram("u", "p");
        b.seed([1; 32]);
        b.seed([2; 32]);
        assert_eq!(b.nonce().unwrap(), n1, "the second seed is ignored");
        assert_ne!(a.nonce().unwrap(), n1, "nonces differ");
        assert_eq!(n1.len(), 24);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let a = ClientAuth::scram("alice", "hunter2");
        assert!(!format!("{a:?}").contains("hunter2"));
        let b = ClientAuth::bearer("tok_secret");
        assert!(!format!("{b:?}").contains("tok_secret"));
    }
}
