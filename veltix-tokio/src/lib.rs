//! # veltix-tokio: async Veltix client and server on tokio
//!
//! A thin driver over the sans-IO core [`veltix_proto`]: the core's
//! [`ClientSession`](veltix_proto::ClientSession) (one per [`Client`]) and
//! [`Hub`](veltix_proto::Hub) (one per [`Server`]) hold every protocol and
//! session rule (handshake, retries, admission, tags, broadcast targeting,
//! request deadlines, backpressure). This crate only dials, accepts, moves
//! bytes, sleeps until the core's deadlines and runs your handlers. The
//! configuration, message, payload and error types are the core's, shared
//! with `veltix-std`: switching driver is a change of import (and `.await`s).
//!
//! * [`Client`]: `Client::new(config)`, handlers (`on_connect`, `on_recv`,
//!   `route`, `on_disconnect`), `connect().await`, `send` (waits while the
//!   bounded outbound queue is full) / `try_send`, `request` (Veltix's
//!   `send_and_wait`), `ping`, `retry`/`stop_retry`, `disconnect`, and
//!   [`Client::recv`] for what no handler consumed.
//! * [`Server`]: `Server::new(config)`, handlers, `start().await`,
//!   `send`/`try_send`/`request`/`ping` to one [`Peer`], `broadcast`
//!   (all, except, to a list, by tag; encoded once), tags on [`Peer`],
//!   `close_client`, `shutdown(flush)` (bounded in time) and
//!   [`Server::recv`] for what no handler consumed.
//!
//! Handlers are async and run on their own tasks, never on an I/O task, in
//! order per peer (connect, messages, disconnect). Events waiting for a
//! peer's handlers are bounded in bytes; past the bound the driver stops
//! reading that peer. Request, ping, write and flush deadlines fire from the
//! core's timers whether or not the application takes its events.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), veltix_tokio::Error> {
//! use std::time::Duration;
//! use veltix_tokio::{Client, ClientConfig, MessageType, Server, ServerConfig};
//!
//! const ECHO: MessageType = MessageType::new(200);
//!
//! let server = Server::new(ServerConfig::new("127.0.0.1", 0))?;
//! server.route(ECHO, |server: Server, peer, msg| async move {
//!     let _ = server.reply(&peer, &msg, ECHO, msg.payload.clone());
//! })?;
//! server.start().await?;
//! let port = server.local_addr().expect("running").port();
//!
//! let client = Client::new(ClientConfig::new("127.0.0.1", port))?;
//! client.on_connect(|client: Client| async move {
//!     println!("connected to {:?}", client.peer_addr());
//! });
//! client.connect().await?;
//! let reply = client.request(ECHO, "hello", Some(Duration::from_secs(5))).await?;
//! assert_eq!(reply.text()?, "hello");
//! let rtt = client.ping(None).await?;
//! println!("rtt {rtt:?}");
//! client.disconnect().await;
//! server.shutdown(Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```

//!
//! ## TLS and other streams
//!
//! [`Server::with_tls`] and [`Client::with_tls`] run every connection over
//! TLS (`tokio-rustls`, the `ring` provider by default, `aws-lc-rs` with
//! that feature), with the same configs as `veltix-std`: [`ServerTls`] and
//! [`ClientTls`] from [`veltix_tls`] (re-exported as [`tls`]), built from
//! PEM files or from your own `Arc<rustls::ServerConfig>` /
//! `Arc<rustls::ClientConfig>`. A server is plain or TLS-only; a TLS client
//! requires TLS. The TLS handshake runs inside the handshake deadline
//! (`handshake_timeout`). Failures are [`Error::Tls`] carrying a
//! [`TlsError`]; with mutual TLS the verified client identity is
//! [`Peer::tls_identity`]. See SECURITY.md.
//!
//! Connections run over any [`Io`] stream (`AsyncRead + AsyncWrite`): TLS
//! is one more stream type. [`Server::start_on`] serves the connections of
//! any [`Listener`] (a Unix socket, a simulated network) instead of binding
//! TCP, and [`Client::with_connector`] dials through any [`Connector`]
//! ([`TcpConnector`] by default), TLS or not. The same code then runs
//! under turmoil's simulated network: see "Testing your application with
//! veltix" in TESTING.md of the source repository.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use veltix_tokio::{Client, ClientConfig, ClientTls, Server, ServerConfig, ServerTls};
//!
//! # let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
//! # let (cert_pem, key_pem) = (ck.cert.pem(), ck.key_pair.serialize_pem());
//! // cert_pem / key_pem: your certificate chain and key (or `cert_pem_files`).
//! let tls = ServerTls::builder().cert_pem(cert_pem.as_bytes(), key_pem.as_bytes())?.build()?;
//! let server = Server::with_tls(ServerConfig::new("127.0.0.1", 0), tls)?;
//! server.start().await?;
//! let port = server.local_addr().expect("running").port();
//!
//! let tls = ClientTls::builder().ca_pem(cert_pem.as_bytes())?.build()?;
//! let client = Client::with_tls(ClientConfig::new("localhost", port), tls)?;
//! client.connect().await?;
//! println!("{}", client.tls_info().expect("over TLS"));
//! client.ping(Some(Duration::from_secs(5))).await?;
//! client.disconnect().await;
//! server.shutdown(Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod dispatch;
mod io;
mod server;
mod tls_io;

pub use bytes::Bytes;
pub use client::{Client, ClientEvent, Connector, TcpConnector};
pub use io::Io;
pub use serde_json::Value;
pub use server::Listener;
pub use server::{ClientInfo, Peer, Server, ServerEvent};
pub use veltix_proto::auth::{self, ClientAuth, Identity, MemoryStore, ServerAuth};
pub use veltix_proto::payload;
pub use veltix_proto::retry::{Backoff, RetryPolicy};
pub use veltix_proto::{Capability, DuplicateIdentity, Negotiated};
pub use veltix_proto::{
    ClientConfig, CloseReason, ConfigError, ConnectionStats, Deadlines, DisconnectReason,
    DisconnectState, Error, Frame, HandshakeError, HubStats, LocalHello, MessageType, PeerHello,
    SendError, ServerConfig, Tags, Wait,
};
pub use veltix_tls as tls;
pub use veltix_tls::{ClientTls, ServerTls, TlsError, TlsInfo};

/// Locks a std mutex, ignoring poisoning (no critical section here can leave
/// its data half-updated, and user code never runs under a lock).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The core's clock: tokio's, so `tokio::time::pause()` drives the core too.
pub(crate) fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// A core deadline on tokio's clock.
pub(crate) fn instant(t: std::time::Instant) -> tokio::time::Instant {
    tokio::time::Instant::from_std(t)
}

/// The README's code blocks, compiled and run as doctests (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// 32 bytes from the operating system, for the nonces of authentication.
fn os_seed() -> Result<[u8; 32], Error> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| {
        Error::Config(veltix_proto::ConfigError {
            field: "auth",
            problem: format!("no randomness from the operating system: {e}"),
        })
    })?;
    Ok(seed)
}
