//! # veltix-tls: TLS for the Veltix drivers
//!
//! What `veltix-std` and `veltix-tokio` share about TLS, in one place: the
//! rustls configuration of a server ([`ServerTls`]) and of a client
//! ([`ClientTls`]), built from PEM files or handed over ready-made, the
//! crypto provider ([`provider`]), what a finished handshake negotiated
//! ([`TlsInfo`]), the identity of a verified client certificate
//! ([`peer_identity`]) and the error type ([`TlsError`]).
//!
//! TLS wraps the whole byte stream from its first byte, the Veltix
//! handshake included, so the drivers run it below the sans-IO core: the
//! core keeps taking and giving plaintext. Policy:
//!
//! * a server is plain or TLS-only; a client configured with TLS requires it;
//! * the TLS handshake runs inside the Veltix handshake deadline
//!   (`handshake_timeout`): a peer that stalls in it is cut like a slow hello;
//! * a peer that does not speak TLS fails with a [`TlsError`] (a plaintext
//!   Veltix client, which waits for the server to speak first, is answered
//!   a plaintext [`TLS_REQUIRED`] rejection after [`plaintext_probe_delay`]),
//!   and EOF without `close_notify` is an ordinary close (the core still
//!   reports a frame cut in the middle);
//! * ALPN `veltix/1` ([`ALPN`]) is offered by clients and accepted by
//!   servers, never required (a client that offers no ALPN is served).
//!
//! Every config is built with an explicit provider
//! (`builder_with_provider`), never rustls's process-wide default: `ring`
//! by default, `aws-lc-rs` with that feature.
//!
//! ```
//! use veltix_tls::{ClientTls, ServerTls};
//!
//! // A throwaway certificate for "localhost" (use your own PEM files).
//! let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
//! let (cert, key) = (ck.cert.pem(), ck.key_pair.serialize_pem());
//!
//! let server = ServerTls::builder()
//!     .cert_pem(cert.as_bytes(), key.as_bytes())
//!     .unwrap()
//!     .build()
//!     .unwrap();
//! let client = ClientTls::builder().ca_pem(cert.as_bytes()).unwrap().build().unwrap();
//! // Hand them to `Server::with_tls(config, server)` / `Client::with_tls(config, client)`.
//! # let _ = (server, client);
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use rustls;
pub use rustls_pki_types as pki_types;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CommonState, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

#[cfg(not(any(feature = "ring", feature = "aws-lc-rs")))]
compile_error!(
    "veltix-tls needs a crypto provider: enable the `ring` (default) or `aws-lc-rs` feature"
);

/// The ALPN protocol name clients offer and servers accept (never required).
pub const ALPN: &[u8] = b"veltix/1";

/// The reason of the plaintext Veltix rejection a TLS server sends a peer
/// that said nothing for [`plaintext_probe_delay`]: a plaintext Veltix
/// client (it waits for the server's hello, which a TLS server never sends
/// in plaintext). Such a client, Python veltix included, then reports a
/// rejection naming TLS instead of waiting for its handshake deadline.
pub const TLS_REQUIRED: &str = "tls_required";

/// How long a TLS server waits for the first byte of a connection before
/// it takes the peer for a plaintext Veltix client and answers
/// [`TLS_REQUIRED`]: half the handshake deadline. A TLS client sends its
/// ClientHello as soon as TCP connects, so it is never taken for one
/// unless its first bytes take that long to arrive.
pub fn plaintext_probe_delay(handshake_timeout: std::time::Duration) -> std::time::Duration {
    handshake_timeout / 2
}

/// The plaintext `{"error": "tls_required"}` handshake message (see [`TLS_REQUIRED`]).
pub fn tls_required_rejection() -> Vec<u8> {
    veltix_proto::handshake::encode_rejection(TLS_REQUIRED).to_vec()
}

/// The crypto provider every config of this crate is built with: aws-lc-rs
/// when the `aws-lc-rs` feature is on, else ring. Passed explicitly to
/// rustls (`builder_with_provider`): the process-wide default provider is
/// neither read nor installed.
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    return Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    return Arc::new(rustls::crypto::ring::default_provider());
}

// -------------------------------------------------------------------- errors

/// What TLS can fail with: loading certificates and keys, building a
/// config, and on a connection.
///
/// The drivers report connection failures as `veltix_proto::Error::Tls`
/// holding one of these; [`TlsError::of`] finds it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// PEM that could not be parsed, or that holds nothing of the kind wanted.
    #[error("{what}: {problem}")]
    Pem {
        /// What was being loaded (a file name, or "certificate PEM", ...).
        what: String,
        /// What is wrong with it.
        problem: String,
    },
    /// A server name that is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {0:?}")]
    InvalidServerName(String),
    /// rustls refused the configuration (a key that does not match its
    /// certificate, an unusable CA, ...).
    #[error("invalid TLS configuration: {0}")]
    Config(String),
    /// The TLS handshake failed (an untrusted, expired or misnamed
    /// certificate, a missing client certificate, an alert from the peer, ...).
    #[error("TLS handshake failed: {0}")]
    Handshake(rustls::Error),
    /// The peer sent something that is not TLS: it does not speak TLS (a
    /// plaintext server, or not a Veltix server at all).
    #[error("the peer does not speak TLS (it sent a non-TLS record)")]
    NotTls,
    /// The peer closed the connection in the middle of the TLS handshake
    /// (it may not speak TLS, or it refused our certificate without an alert).
    #[error("the peer closed the connection during the TLS handshake")]
    HandshakeEof,
    /// A TLS error after the handshake (a corrupt record, an alert).
    #[error("TLS error: {0}")]
    Protocol(rustls::Error),
    /// (Server side) the peer sent nothing for [`plaintext_probe_delay`]:
    /// taken for a plaintext client and answered [`TLS_REQUIRED`].
    #[error("the peer sent nothing: taken for a plaintext client (answered tls_required)")]
    PlaintextPeer,
}

impl TlsError {
    /// Classifies a rustls error seen on a connection (`handshaking`: the
    /// TLS handshake had not finished).
    pub fn from_rustls(e: rustls::Error, handshaking: bool) -> TlsError {
        use rustls::InvalidMessage;
        match e {
            // The first bytes did not parse as a TLS record: no TLS there.
            rustls::Error::InvalidMessage(
                InvalidMessage::InvalidContentType
                | InvalidMessage::UnknownProtocolVersion
                | InvalidMessage::MessageTooLarge,
            ) if handshaking => TlsError::NotTls,
            e if handshaking => TlsError::Handshake(e),
            e => TlsError::Protocol(e),
        }
    }

    /// The rustls error, for handshake and protocol failures.
    pub fn rustls_error(&self) -> Option<&rustls::Error> {
        match self {
            TlsError::Handshake(e) | TlsError::Protocol(e) => Some(e),
            _ => None,
        }
    }

    /// The `TlsError` a driver error carries (`veltix_proto::Error::Tls`).
    pub fn of(e: &veltix_proto::Error) -> Option<&TlsError> {
        match e {
            veltix_proto::Error::Tls(b) => b.downcast_ref(),
            veltix_proto::Error::Io(e) => Self::in_io(e),
            _ => None,
        }
    }

    /// The `TlsError` an I/O error carries (see [`into_io`](Self::into_io)).
    pub fn in_io(e: &std::io::Error) -> Option<&TlsError> {
        e.get_ref().and_then(|i| i.downcast_ref())
    }

    /// Wraps this error into an I/O error of kind `InvalidData` (what a
    /// transport's read or write returns).
    pub fn into_io(self) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::InvalidData, self)
    }
}

impl From<TlsError> for veltix_proto::Error {
    fn from(e: TlsError) -> Self {
        veltix_proto::Error::Tls(Box::new(e))
    }
}

/// Splits an I/O error of a TLS transport into the error to hand the core
/// (same kind; the core keeps only the kind) and the [`TlsError`] it
/// carried, if any.
pub fn split_io_error(e: std::io::Error) -> (std::io::Error, Option<TlsError>) {
    if TlsError::in_io(&e).is_none() {
        return (e, None);
    }
    let kind = e.kind();
    let tls = e
        .into_inner()
        .and_then(|i| i.downcast::<TlsError>().ok())
        .map(|b| *b);
    (std::io::Error::new(kind, "TLS failed"), tls)
}

/// What a client reports when its session gives up: the session saw the
/// last attempt's TLS failure as an I/O error kind only
/// (`Closed(Transport(kind))`), so that error becomes `last_tls`, the
/// failure itself. Any other error stays.
pub fn give_up_error(
    session_error: veltix_proto::Error,
    last_tls: Option<TlsError>,
) -> veltix_proto::Error {
    match (last_tls, session_error) {
        (Some(tls), veltix_proto::Error::Closed(veltix_proto::CloseReason::Transport(_))) => {
            tls.into()
        }
        (_, e) => e,
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::ReadFile {
        path: path.to_path_buf(),
        source,
    })
}

fn pem_error(what: &str, e: impl std::fmt::Display) -> TlsError {
    TlsError::Pem {
        what: what.to_owned(),
        problem: e.to_string(),
    }
}

/// Every certificate in `pem` (at least one).
fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, e))?;
    if certs.is_empty() {
        return Err(pem_error(what, "no CERTIFICATE found"));
    }
    Ok(certs)
}

/// The first private key in `pem` (PKCS#8, PKCS#1 or SEC1).
fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => pem_error(what, "no PRIVATE KEY found"),
        e => pem_error(what, e),
    })
}

/// A certificate chain and its private key read from PEM files (the chain
/// first), each named by its path in errors. The servers' certificate and
/// the clients' (mutual TLS) are loaded alike.
fn cert_and_key_from_files(
    cert_chain: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = certs_from_pem(&read_file(cert_chain)?, &cert_chain.display().to_string())?;
    let key = key_from_pem(&read_file(key)?, &key.display().to_string())?;
    Ok((chain, key))
}

fn roots_from_pem(pem: &[u8], what: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certs_from_pem(pem, what)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Config(format!("{what}: unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn config_error(e: rustls::Error) -> TlsError {
    TlsError::Config(e.to_string())
}

// -------------------------------------------------------------------- server

/// A server's TLS settings: a shared `rustls::ServerConfig`. Cheap to clone.
///
/// Build one from PEM with [`ServerTls::builder`], or pass your own config
/// with [`ServerTls::new`].
#[derive(Clone)]
pub struct ServerTls {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Uses the application's own config as it is (its provider, versions,
    /// client verification and ALPN list).
    pub fn new(config: Arc<rustls::ServerConfig>) -> ServerTls {
        ServerTls { config }
    }

    /// A builder: a certificate chain and key, and optionally the CAs of
    /// client certificates (mutual TLS).
    pub fn builder() -> ServerTlsBuilder {
        ServerTlsBuilder::default()
    }

    /// The rustls config.
    pub fn config(&self) -> &Arc<rustls::ServerConfig> {
        &self.config
    }

    /// A new rustls connection for an accepted socket (the blocking driver
    /// drives it by hand; the async one uses `tokio_rustls`).
    ///
    /// # Errors
    /// [`TlsError::Config`] if rustls cannot start one from this config.
    pub fn new_connection(&self) -> Result<rustls::ServerConnection, TlsError> {
        rustls::ServerConnection::new(self.config.clone()).map_err(config_error)
    }
}

/// Builds a [`ServerTls`] from PEM (see [`ServerTls::builder`]).
#[derive(Default)]
pub struct ServerTlsBuilder {
    cert: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    client_roots: Option<RootCertStore>,
}

impl std::fmt::Debug for ServerTlsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTlsBuilder")
            .field("cert", &self.cert.as_ref().map(|c| c.0.len()))
            .field("client_auth", &self.client_roots.is_some())
            .finish()
    }
}

impl ServerTlsBuilder {
    /// The server's certificate chain (end-entity first) and private key, in PEM.
    ///
    /// # Errors
    /// [`TlsError::Pem`] when either holds no usable item.
    pub fn cert_pem(mut self, cert_chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let chain = certs_from_pem(cert_chain, "certificate PEM")?;
        let key = key_from_pem(key, "private key PEM")?;
        self.cert = Some((chain, key));
        Ok(self)
    }

    /// [`cert_pem`](Self::cert_pem) from files.
    ///
    /// # Errors
    /// [`TlsError::ReadFile`], [`TlsError::Pem`].
    pub fn cert_pem_files(
        mut self,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        self.cert = Some(cert_and_key_from_files(cert_chain.as_ref(), key.as_ref())?);
        Ok(self)
    }

    /// The certificate chain and key, already decoded.
    pub fn cert_der(
        mut self,
        cert_chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Self {
        self.cert = Some((cert_chain, key));
        self
    }

    /// Requires a client certificate signed by one of these CAs (PEM):
    /// mutual TLS. Its identity is then on the server's peer handle
    /// (`peer.tls_identity()`).
    ///
    /// # Errors
    /// [`TlsError::Pem`], [`TlsError::Config`].
    pub fn client_ca_pem(mut self, ca: &[u8]) -> Result<Self, TlsError> {
        self.client_roots = Some(roots_from_pem(ca, "client CA PEM")?);
        Ok(self)
    }

    /// [`client_ca_pem`](Self::client_ca_pem) from a file.
    ///
    /// # Errors
    /// [`TlsError::ReadFile`], [`TlsError::Pem`], [`TlsError::Config`].
    pub fn client_ca_pem_file(mut self, ca: impl AsRef<Path>) -> Result<Self, TlsError> {
        let p = ca.as_ref();
        self.client_roots = Some(roots_from_pem(&read_file(p)?, &p.display().to_string())?);
        Ok(self)
    }

    /// The config: rustls's default protocol versions (TLS 1.3 and 1.2)
    /// and cipher suites of [`provider`], ALPN `veltix/1` accepted.
    ///
    /// # Errors
    /// [`TlsError::Config`]: no certificate given, a key that does not
    /// match it, unusable client CAs.
    pub fn build(self) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let (chain, key) = self
            .cert
            .ok_or_else(|| TlsError::Config("a server needs a certificate and a key".into()))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .map_err(config_error)?;
        let builder = match self.client_roots {
            Some(roots) => {
                let verifier: Arc<dyn ClientCertVerifier> =
                    rustls::server::WebPkiClientVerifier::builder_with_provider(
                        Arc::new(roots),
                        provider,
                    )
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(config_error)?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(ServerTls::new(Arc::new(config)))
    }
}

// -------------------------------------------------------------------- client

/// A client's TLS settings: a shared `rustls::ClientConfig` and the name
/// the server's certificate must carry (by default the host the client
/// dials). Cheap to clone.
#[derive(Clone)]
pub struct ClientTls {
    config: Arc<rustls::ClientConfig>,
    server_name: Option<ServerName<'static>>,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("alpn", &self.config.alpn_protocols)
            .finish_non_exhaustive()
    }
}

impl ClientTls {
    /// Uses the application's own config as it is.
    pub fn new(config: Arc<rustls::ClientConfig>) -> ClientTls {
        ClientTls {
            config,
            server_name: None,
        }
    }

    /// A builder: the CAs to trust, optionally a client certificate.
    pub fn builder() -> ClientTlsBuilder {
        ClientTlsBuilder::default()
    }

    /// Checks the server's certificate against `name` instead of the host
    /// the client dials (a DNS name or an IP address).
    ///
    /// # Errors
    /// [`TlsError::InvalidServerName`].
    pub fn server_name(mut self, name: &str) -> Result<Self, TlsError> {
        self.server_name = Some(parse_server_name(name)?);
        Ok(self)
    }

    /// The rustls config.
    pub fn config(&self) -> &Arc<rustls::ClientConfig> {
        &self.config
    }

    /// The name to verify the server as, when dialling `host`: the one set
    /// with [`server_name`](Self::server_name), else `host`.
    ///
    /// # Errors
    /// [`TlsError::InvalidServerName`] when `host` is not a valid name.
    pub fn name_for(&self, host: &str) -> Result<ServerName<'static>, TlsError> {
        match &self.server_name {
            Some(n) => Ok(n.clone()),
            None => parse_server_name(host),
        }
    }

    /// A new rustls connection to `host` (see [`name_for`](Self::name_for)).
    ///
    /// # Errors
    /// [`TlsError::InvalidServerName`], [`TlsError::Config`].
    pub fn new_connection(&self, host: &str) -> Result<rustls::ClientConnection, TlsError> {
        rustls::ClientConnection::new(self.config.clone(), self.name_for(host)?)
            .map_err(config_error)
    }
}

fn parse_server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    // "[::1]" (as in a URL) is the IP address ::1.
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    ServerName::try_from(bare.to_owned()).map_err(|_| TlsError::InvalidServerName(name.to_owned()))
}

/// Builds a [`ClientTls`] (see [`ClientTls::builder`]).
pub struct ClientTlsBuilder {
    roots: RootCertStore,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    server_name: Option<ServerName<'static>>,
}

impl Default for ClientTlsBuilder {
    fn default() -> Self {
        ClientTlsBuilder {
            roots: RootCertStore::empty(),
            identity: None,
            server_name: None,
        }
    }
}

impl std::fmt::Debug for ClientTlsBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTlsBuilder")
            .field("roots", &self.roots.len())
            .field("client_cert", &self.identity.is_some())
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl ClientTlsBuilder {
    /// Trusts the CA certificates of this PEM bundle (added to any given before).
    ///
    /// # Errors
    /// [`TlsError::Pem`], [`TlsError::Config`] for an unusable certificate.
    pub fn ca_pem(mut self, pem: &[u8]) -> Result<Self, TlsError> {
        for cert in certs_from_pem(pem, "CA PEM")? {
            self.roots
                .add(cert)
                .map_err(|e| TlsError::Config(format!("unusable CA certificate: {e}")))?;
        }
        Ok(self)
    }

    /// [`ca_pem`](Self::ca_pem) from a file.
    ///
    /// # Errors
    /// [`TlsError::ReadFile`], [`TlsError::Pem`], [`TlsError::Config`].
    pub fn ca_pem_file(mut self, path: impl AsRef<Path>) -> Result<Self, TlsError> {
        let p = path.as_ref();
        let roots = roots_from_pem(&read_file(p)?, &p.display().to_string())?;
        self.roots.extend(roots.roots);
        Ok(self)
    }

    /// Trusts these CA certificates, already decoded.
    ///
    /// # Errors
    /// [`TlsError::Config`] for an unusable certificate.
    pub fn ca_der(
        mut self,
        certs: impl IntoIterator<Item = CertificateDer<'static>>,
    ) -> Result<Self, TlsError> {
        for cert in certs {
            self.roots
                .add(cert)
                .map_err(|e| TlsError::Config(format!("unusable CA certificate: {e}")))?;
        }
        Ok(self)
    }

    /// Trusts Mozilla's root CAs (the `webpki-roots` crate, compiled in).
    #[cfg(feature = "webpki-roots")]
    pub fn webpki_roots(mut self) -> Self {
        self.roots
            .extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        self
    }

    /// Presents this certificate chain and key (PEM) when the server asks
    /// for one (mutual TLS).
    ///
    /// # Errors
    /// [`TlsError::Pem`].
    pub fn client_cert_pem(mut self, cert_chain: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let chain = certs_from_pem(cert_chain, "client certificate PEM")?;
        let key = key_from_pem(key, "client key PEM")?;
        self.identity = Some((chain, key));
        Ok(self)
    }

    /// [`client_cert_pem`](Self::client_cert_pem) from files.
    ///
    /// # Errors
    /// [`TlsError::ReadFile`], [`TlsError::Pem`].
    pub fn client_cert_pem_files(
        mut self,
        cert_chain: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<Self, TlsError> {
        self.identity = Some(cert_and_key_from_files(cert_chain.as_ref(), key.as_ref())?);
        Ok(self)
    }

    /// The name the server's certificate must carry, instead of the dialled host.
    ///
    /// # Errors
    /// [`TlsError::InvalidServerName`].
    pub fn server_name(mut self, name: &str) -> Result<Self, TlsError> {
        self.server_name = Some(parse_server_name(name)?);
        Ok(self)
    }

    /// The config: rustls's default protocol versions and cipher suites of
    /// [`provider`], ALPN `veltix/1` offered.
    ///
    /// # Errors
    /// [`TlsError::Config`]: no CA to trust, or a client key that does not
    /// match its certificate.
    pub fn build(self) -> Result<ClientTls, TlsError> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(rustls::DEFAULT_VERSIONS)
            .map_err(config_error)?;
        if self.roots.is_empty() {
            return Err(TlsError::Config(
                "no CA to trust: give a CA bundle (or enable webpki-roots)".into(),
            ));
        }
        let builder = builder.with_root_certificates(self.roots);
        let mut config = match self.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain, key)
                .map_err(config_error)?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(ClientTls {
            config: Arc::new(config),
            server_name: self.server_name,
        })
    }
}

// ---------------------------------------------------------------- handshake

/// What a finished TLS handshake negotiated, and who the peer is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsInfo {
    /// The protocol version (`TLSv1_3`, `TLSv1_2`).
    pub protocol: rustls::ProtocolVersion,
    /// The cipher suite.
    pub cipher_suite: rustls::CipherSuite,
    /// The ALPN protocol agreed on, if any (`veltix/1`).
    pub alpn: Option<Vec<u8>>,
    /// The identity of the peer's verified certificate ([`peer_identity`]):
    /// a server sees its client's (mutual TLS only); a client sees its server's.
    pub peer_identity: Option<String>,
}

impl TlsInfo {
    /// The peer's certificate identity as an authenticated
    /// [`Identity`](veltix_proto::Identity) (method `ClientCertificate`): what a
    /// server hands its hub (`Hub::set_transport_identity`), so that
    /// `peer.identity()`, `Connected` events and the duplicate-identity rule
    /// see mutual-TLS clients like authenticated ones.
    pub fn identity(&self) -> Option<veltix_proto::Identity> {
        self.peer_identity.as_ref().map(|name| {
            veltix_proto::Identity::new(name.clone(), veltix_proto::AuthMethod::ClientCertificate)
        })
    }

    /// What `conn` negotiated; `None` while it is still handshaking.
    pub fn of(conn: &CommonState) -> Option<TlsInfo> {
        if conn.is_handshaking() {
            return None;
        }
        Some(TlsInfo {
            protocol: conn.protocol_version()?,
            cipher_suite: conn.negotiated_cipher_suite()?.suite(),
            alpn: conn.alpn_protocol().map(<[u8]>::to_vec),
            peer_identity: conn.peer_certificates().and_then(peer_identity),
        })
    }
}

impl std::fmt::Display for TlsInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {:?}", self.protocol, self.cipher_suite)?;
        if let Some(a) = &self.alpn {
            write!(f, " alpn {}", String::from_utf8_lossy(a))?;
        }
        if let Some(id) = &self.peer_identity {
            write!(f, " peer {id}")?;
        }
        Ok(())
    }
}

/// The identity of a verified certificate chain (end-entity first): the
/// subject's common name (CN), else the first DNS name of its subject
/// alternative names. `None` for an empty chain or a certificate with
/// neither.
///
/// Call it only on a chain rustls verified (`peer_certificates()` after
/// the handshake): it parses, it does not verify.
pub fn peer_identity(chain: &[CertificateDer<'_>]) -> Option<String> {
    let ee = chain.first()?;
    let cert = webpki::EndEntityCert::try_from(ee).ok()?;
    common_name(cert.subject()).or_else(|| cert.valid_dns_names().next().map(str::to_owned))
}

/// One DER TLV at the start of `input`: (tag, contents, rest).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// The last CN of a DER `Name` (its contents: a sequence of SETs of
/// `AttributeTypeAndValue`), as UTF8String, PrintableString or IA5String.
fn common_name(mut name: &[u8]) -> Option<String> {
    const CN: &[u8] = &[0x55, 0x04, 0x03]; // 2.5.4.3
    const SET: u8 = 0x31;
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let mut found = None;
    while !name.is_empty() {
        let (tag, mut set, rest) = tlv(name)?;
        name = rest;
        if tag != SET {
            return None;
        }
        while !set.is_empty() {
            let (tag, atv, rest) = tlv(set)?;
            set = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = tlv(atv)?;
            if tag != OID || oid != CN {
                continue;
            }
            let (tag, text, _) = tlv(value)?;
            // UTF8String, PrintableString, IA5String.
            if matches!(tag, 0x0c | 0x13 | 0x16) {
                if let Ok(s) = std::str::from_utf8(text) {
                    found = Some(s.to_owned());
                }
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: Option<&str>, sans: &[&str]) -> CertificateDer<'static> {
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, "Veltix");
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().clone()
    }

    #[test]
    fn identity_is_the_cn_then_the_first_dns_name() {
        assert_eq!(
            peer_identity(&[cert(Some("alice"), &["a.example", "b.example"])]).as_deref(),
            Some("alice")
        );
        assert_eq!(
            peer_identity(&[cert(None, &["a.example", "b.example"])]).as_deref(),
            Some("a.example")
        );
        assert_eq!(peer_identity(&[cert(None, &[])]), None);
        assert_eq!(peer_identity(&[]), None);
        assert_eq!(
            peer_identity(&[CertificateDer::from(vec![0x30, 0x03, 1, 2])]),
            None
        );
    }

    #[test]
    fn common_name_parser_survives_garbage() {
        for bytes in [
            &[][..],
            &[0x31],
            &[0x31, 0x85, 0xff, 0xff, 0xff, 0xff, 0xff],
            &[0x31, 0x02, 0x30, 0x7f],
            &[0x30, 0x00],
            &[0x31, 0x07, 0x30, 0x05, 0x06, 0x03, 0x55, 0x04, 0x03],
        ] {
            assert_eq!(common_name(bytes), None, "{bytes:?}");
        }
    }

    #[test]
    fn pem_errors_are_typed() {
        assert!(matches!(
            ServerTls::builder().cert_pem(b"nothing", b"nothing"),
            Err(TlsError::Pem { .. })
        ));
        assert!(matches!(
            ClientTls::builder().ca_pem_file("/nonexistent/ca.pem"),
            Err(TlsError::ReadFile { .. })
        ));
        assert!(matches!(
            ClientTls::builder().build(),
            Err(TlsError::Config(_))
        ));
        assert!(matches!(
            ServerTls::builder().build(),
            Err(TlsError::Config(_))
        ));
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let mismatched = ServerTls::builder()
            .cert_pem(ck.cert.pem().as_bytes(), other.serialize_pem().as_bytes())
            .unwrap()
            .build();
        assert!(
            matches!(mismatched, Err(TlsError::Config(_))),
            "{mismatched:?}"
        );
        let c = ClientTls::builder()
            .ca_pem(ck.cert.pem().as_bytes())
            .unwrap()
            .build()
            .unwrap();
        assert!(c.name_for("localhost").is_ok());
        assert!(c.name_for("[::1]").is_ok());
        assert!(matches!(
            c.clone().server_name("not a name!"),
            Err(TlsError::InvalidServerName(_))
        ));
        let e: veltix_proto::Error = TlsError::NotTls.into();
        assert!(matches!(TlsError::of(&e), Some(TlsError::NotTls)));
        let io = TlsError::HandshakeEof.into_io();
        assert!(matches!(TlsError::in_io(&io), Some(TlsError::HandshakeEof)));
    }

    /// The server's certificate and the client's (mutual TLS) load from PEM
    /// files alike; a missing or unusable file is named in the error.
    #[test]
    fn cert_and_key_load_from_files() {
        let dir = std::env::temp_dir().join(format!("veltix-tls-pem-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (crt, key, junk) = (dir.join("c.crt"), dir.join("c.key"), dir.join("junk.pem"));
        std::fs::write(&crt, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.key_pair.serialize_pem()).unwrap();
        std::fs::write(&junk, "nothing").unwrap();
        let server = ServerTls::builder().cert_pem_files(&crt, &key).unwrap();
        assert!(server.build().is_ok());
        let client = ClientTls::builder()
            .ca_pem_file(&crt)
            .unwrap()
            .client_cert_pem_files(&crt, &key)
            .unwrap();
        assert!(client.build().is_ok());
        let missing = dir.join("missing.key");
        match ServerTls::builder().cert_pem_files(&crt, &missing) {
            Err(TlsError::ReadFile { path, .. }) => assert_eq!(path, missing),
            other => panic!("{other:?}"),
        }
        match ClientTls::builder().client_cert_pem_files(&junk, &key) {
            Err(TlsError::Pem { what, .. }) => assert_eq!(what, junk.display().to_string()),
            other => panic!("{other:?}"),
        }
        match ClientTls::builder().client_cert_pem_files(&crt, &junk) {
            Err(TlsError::Pem { what, .. }) => assert_eq!(what, junk.display().to_string()),
            other => panic!("{other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
