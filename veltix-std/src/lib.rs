//! # veltix-std: blocking Veltix client and server on std threads
//!
//! A thin driver over the [`veltix_proto`] sans-IO core. Every protocol and
//! session rule lives in the core: framing, handshake, request ids and
//! deadlines, PONGs, the client's reconnect policy and `on_disconnect`
//! reports ([`veltix_proto::ClientSession`]), the server's admission,
//! registry, tags and broadcast targeting ([`veltix_proto::Hub`]). This
//! crate only dials, accepts, moves bytes, sleeps until the core's
//! deadlines and runs your callbacks. It speaks the same wire as the Python
//! `veltix` package 3.x, so either side of a deployment can be replaced.
//!
//! ## Architecture
//!
//! * **One I/O thread per [`Server`] and per [`Client`]**, a `mio` readiness
//!   loop: the listener, every connection and a `mio::Waker`. The core sits
//!   in one `Mutex`, shared by the I/O thread and your threads; commands
//!   (`send`, `request`, `broadcast`, ...) lock it, call the core and wake
//!   the I/O thread. It sleeps until the core's next deadline, reads a
//!   socket only while the core wants input, waits for writability only
//!   while it holds unwritten bytes, writes with vectored writes, and drops
//!   a socket as soon as the core is done with it.
//! * **Callbacks** (routes, `on_recv`, `on_connect`, `on_disconnect`) run
//!   on a pool of up to `max_workers` threads (started on demand), serially per peer and in arrival
//!   order (unlike Python veltix, whose pool reorders). A worker serves a
//!   few jobs of one peer, then the next peer: flooding peers cannot starve
//!   the others. Each peer's queue is bounded in bytes; while it is full the
//!   I/O thread stops reading that peer (TCP pushes back), but always takes
//!   request outcomes, so `request`/`ping` deadlines hold whatever your
//!   callbacks do. A panicking callback is caught and logged.
//! * **Blocking calls** park on a condition variable: `request`/`ping`
//!   until the core's outcome (its deadline fires it), `send` while the
//!   outbound queue is full (up to its timeout). [`Client::disconnect`] and
//!   [`Server::shutdown`] end within their flush deadline whatever the peer
//!   does, and join the I/O thread and the pool.
//!
//! ## API
//!
//! * [`Client`]: `new`/`with_tls`/`with_connector`, `connect`, `send`/`try_send`/`reply`, `request`
//!   (`send_and_wait`), `ping` (`ping_server`), routes and callbacks,
//!   `retry`/`stop_retry`, `disconnect`, `wait_closed`.
//! * [`Server`]: `start`/`start_on`, routes and callbacks, `send`/`try_send`/`reply`,
//!   `request`, `ping`, `broadcast`, `broadcast_except`, `broadcast_to`,
//!   `broadcast_tag`, `clients`, `clients_by_tag`, `close_client`,
//!   `shutdown` (`close_all`); tags on [`Peer`] (`ClientInfo`).
//!
//! ```
//! use std::time::Duration;
//! use veltix_std::{Client, ClientConfig, MessageType, Server, ServerConfig};
//!
//! const ECHO: MessageType = MessageType::new(200);
//!
//! let server = Server::new(ServerConfig::new("127.0.0.1", 0)).unwrap();
//! server.route(ECHO, |server, peer, msg| {
//!     server.reply(peer, &msg, ECHO, msg.payload.clone()).unwrap();
//! }).unwrap();
//! server.start().unwrap();
//! let port = server.local_addr().unwrap().port();
//!
//! let client = Client::new(ClientConfig::new("127.0.0.1", port)).unwrap();
//! client.connect().unwrap();
//! let reply = client.request(ECHO, "hello", Some(Duration::from_secs(5))).unwrap();
//! assert_eq!(reply.text().unwrap(), "hello");
//! assert!(client.ping(None).is_ok());
//!
//! assert!(client.disconnect());
//! server.shutdown(Duration::from_secs(1));
//! ```

//!
//! ## TLS
//!
//! [`Server::with_tls`] and [`Client::with_tls`] run every connection over
//! TLS (rustls, the `ring` provider by default, `aws-lc-rs` with that
//! feature). The configs are [`ServerTls`] and [`ClientTls`] from
//! [`veltix_tls`] (re-exported as [`tls`]): built from PEM files, or your own
//! `Arc<rustls::ServerConfig>` / `Arc<rustls::ClientConfig>`. A server is
//! plain or TLS-only; a TLS client requires TLS. The TLS handshake runs
//! inside the handshake deadline (`handshake_timeout`). Failures are
//! [`Error::Tls`] carrying a [`TlsError`]; with mutual TLS the verified
//! client identity is [`Peer::tls_identity`]. See SECURITY.md.
//!
//! ```
//! use std::time::Duration;
//! use veltix_std::{Client, ClientConfig, ClientTls, MessageType, Server, ServerConfig, ServerTls};
//!
//! # let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
//! # let (cert_pem, key_pem) = (ck.cert.pem(), ck.key_pair.serialize_pem());
//! // cert_pem / key_pem: your certificate chain and key (or `cert_pem_files`).
//! let tls = ServerTls::builder().cert_pem(cert_pem.as_bytes(), key_pem.as_bytes())?.build()?;
//! let server = Server::with_tls(ServerConfig::new("127.0.0.1", 0), tls)?;
//! server.start()?;
//! let port = server.local_addr().unwrap().port();
//!
//! // Trust the server's CA (here: its self-signed certificate); the name
//! // checked is the host dialled, "localhost".
//! let tls = ClientTls::builder().ca_pem(cert_pem.as_bytes())?.build()?;
//! let client = Client::with_tls(ClientConfig::new("localhost", port), tls)?;
//! client.connect()?;
//! println!("{}", client.tls_info().unwrap()); // TLSv1_3 TLS13_AES_256_GCM_SHA384 alpn veltix/1 ...
//! assert!(client.ping(Some(Duration::from_secs(5))).is_ok());
//! client.disconnect();
//! server.shutdown(Duration::from_secs(1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! ## Streams
//!
//! Connections run over any [`Io`] stream: a non-blocking byte stream that
//! a `mio` poll can watch ([`mio::net::TcpStream`], [`mio::net::UnixStream`],
//! your own); TLS is one layer over it, not another driver.
//! [`Server::start_on`] serves the connections of any [`Listener`] (a
//! [`mio::net::UnixListener`], streams connected elsewhere and handed over)
//! instead of binding TCP, and [`Client::with_connector`] opens the
//! client's connections with any [`Connector`] instead of dialing TCP
//! ([`TcpConnector`]). [`mio`] is re-exported, so these types are named at
//! the version the driver uses. [`Server::start_on`] shows a server and a
//! client over a Unix socket.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod io;
mod pool;
mod server;
mod transport;

pub use bytes::Bytes;
pub use client::{Client, Connector, TcpConnector};
/// The `mio` crate the driver is built on: its streams and listeners
/// ([`mio::net::TcpStream`], [`mio::net::UnixStream`], ...) implement
/// [`Io`] and [`Listener`].
pub use mio;
pub use serde_json::Value;
pub use server::{ClientInfo, Listener, Peer, Server};
pub use transport::Io;
pub use veltix_proto::auth::{self, ClientAuth, Identity, MemoryStore, ServerAuth};
pub use veltix_proto::payload;
pub use veltix_proto::retry::Backoff;
pub use veltix_proto::{Capability, DuplicateIdentity, Negotiated};
pub use veltix_proto::{
    ClientConfig, CloseReason, ConfigError, ConnectionStats, Deadlines, DisconnectReason,
    DisconnectState, Error, Frame, HandshakeError, HubStats, LocalHello, MessageType, PeerHello,
    RetryPolicy, SendError, ServerConfig, Tags, Wait,
};
pub use veltix_tls as tls;
pub use veltix_tls::{ClientTls, ServerTls, TlsError, TlsInfo};

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
