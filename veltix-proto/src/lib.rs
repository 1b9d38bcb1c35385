//! # veltix-proto: the sans-IO core of the Veltix protocol
//!
//! This crate speaks Veltix protocol 1 (the wire protocol of the Python
//! `veltix` package 3.0–3.3) byte for byte, as pure state machines: no
//! sockets, no threads, no clock reads, no ambient randomness. You move bytes
//! and time in, and take bytes, deadlines and events out. The `veltix-std` and
//! `veltix-tokio` drivers do exactly that; you can do it in your own event
//! loop, a fuzzer or a deterministic simulation.
//!
//! ## Pieces
//!
//! | module | what |
//! |---|---|
//! | [`frame`] | the 15-byte header, [`Frame`], [`MessageType`], encoding |
//! | [`decoder`] | stream reassembly with Veltix's resync rules, counted [`Discard`]s |
//! | [`handshake`] | the JSON handshake state machines, version rule, rejection |
//! | [`correlation`] | request-id allocation and the pending-request table |
//! | [`retry`] | reconnect policy: fixed delay (Veltix) or backoff with seeded jitter |
//! | [`Connection`] | one connection, client or server, in the style of quinn-proto |
//! | [`Acceptor`], [`Tags`] | server-side admission (`max_connection`) and per-peer tags |
//! | [`payload`] | text and Python-compatible JSON payloads |
//!
//! ## The calling contract
//!
//! A [`Connection`] is created when the TCP connection exists
//! ([`Connection::client`] after `connect`, [`Acceptor::accept`] or
//! [`Connection::server`] after `accept`). From then on the driver repeats:
//!
//! 1. **Output.** Write every chunk from [`Connection::poll_transmit`] to the
//!    socket, in order. A server connection has its hello queued from the start.
//! 2. **Events.** Take every [`Event`] from [`Connection::poll_event`]:
//!    `Connected`, `Message`, `Response`, `Pong`, `RequestFailed`,
//!    `Discarded`, `PongDropped`, and finally `Closed`.
//! 3. **Wait** for socket input, but no later than
//!    [`Connection::poll_timeout`]. While output or events are queued it
//!    returns a time that is already due, so a driver that sleeps until it
//!    never sleeps on ready work. `None` means no deadline.
//! 4. **Input.** Bytes read go to [`Connection::handle_input`]; a read of 0
//!    bytes to [`Connection::handle_eof`]; an I/O error to
//!    [`Connection::handle_transport_error`]; a passed deadline to
//!    [`Connection::handle_timeout`] (calling it early or twice is harmless).
//!
//! Commands ([`send`](Connection::send), [`request`](Connection::request),
//! [`reply`](Connection::reply), [`ping`](Connection::ping),
//! [`close`](Connection::close)) may be issued at any point between steps;
//! after one, go back to step 1.
//!
//! **Time.** Every method that needs the time takes `now: Instant` from the
//! caller; the core never reads a clock. `now` should not go backwards (an
//! earlier value is treated as the latest one seen). A simulation can start
//! from any `Instant` and add virtual durations.
//!
//! **Guarantees.** No input from the peer can panic the core or grow its
//! memory past the configured caps (receive buffer, outbound queue, handshake
//! message size). Every request ends exactly once: with a `Response`/`Pong`,
//! or with `RequestFailed` (deadline, or the connection closed). A refused
//! command returns a [`SendError`] and queues nothing; bytes queued but never
//! handed to `poll_transmit` are reported in `Event::Closed::unsent_bytes`.
//!
//! ## A complete event loop over `std::net`
//!
//! ```
//! use std::io::{ErrorKind, Read, Write};
//! use std::net::{TcpListener, TcpStream};
//! use std::sync::Arc;
//! use std::time::{Duration, Instant};
//! use veltix_proto::{Connection, ConnectionConfig, Event, MessageType};
//!
//! /// Runs one connection until `on_event` returns `false` or it closes.
//! fn drive(
//!     conn: &mut Connection,
//!     sock: &mut TcpStream,
//!     mut on_event: impl FnMut(&mut Connection, Event) -> bool,
//! ) -> std::io::Result<()> {
//!     let mut buf = vec![0u8; 8192];
//!     loop {
//!         // 1. Output: everything queued, in order.
//!         while let Some(bytes) = conn.poll_transmit() {
//!             sock.write_all(&bytes)?;
//!         }
//!         // 2. Events: hand each to the application (which may issue commands).
//!         while let Some(event) = conn.poll_event() {
//!             let closed = matches!(event, Event::Closed { .. });
//!             if !on_event(conn, event) || closed {
//!                 while let Some(bytes) = conn.poll_transmit() {
//!                     sock.write_all(&bytes)?; // graceful: flush what was queued
//!                 }
//!                 return Ok(());
//!             }
//!         }
//!         if conn.poll_timeout().is_some_and(|t| t <= Instant::now()) && conn.queued_bytes() > 0 {
//!             continue; // commands issued by callbacks queued more output
//!         }
//!         // 3. Wait for input, no longer than the next deadline.
//!         let now = Instant::now();
//!         match conn.poll_timeout() {
//!             Some(t) if t <= now => {
//!                 conn.handle_timeout(now);
//!                 continue;
//!             }
//!             Some(t) => sock.set_read_timeout(Some(t - now))?,
//!             None => sock.set_read_timeout(None)?,
//!         }
//!         // 4. Input.
//!         match sock.read(&mut buf) {
//!             Ok(0) => conn.handle_eof(Instant::now()),
//!             Ok(n) => conn.handle_input(Instant::now(), &buf[..n]),
//!             Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
//!                 conn.handle_timeout(Instant::now())
//!             }
//!             Err(e) if e.kind() == ErrorKind::Interrupted => {}
//!             Err(e) => conn.handle_transport_error(Instant::now(), e),
//!         }
//!     }
//! }
//!
//! # fn main() -> std::io::Result<()> {
//! let config = Arc::new(ConnectionConfig::default());
//! let listener = TcpListener::bind("127.0.0.1:0")?;
//! let addr = listener.local_addr()?;
//!
//! // An echo server for one client: replies to every message with its payload.
//! let server_config = config.clone();
//! let server = std::thread::spawn(move || -> std::io::Result<()> {
//!     let (mut sock, _) = listener.accept()?;
//!     let mut conn = Connection::server(server_config, Instant::now());
//!     drive(&mut conn, &mut sock, |conn, event| {
//!         if let Event::Message(m) = event {
//!             conn.reply(m.request_id, m.message_type, m.payload).expect("reply");
//!         }
//!         true
//!     })
//! });
//!
//! // A client: one request, one ping, then close.
//! let mut sock = TcpStream::connect(addr)?;
//! let mut conn = Connection::client(config, Instant::now());
//! let mut reply = None;
//! let mut rtt = None;
//! drive(&mut conn, &mut sock, |conn, event| {
//!     match event {
//!         Event::Connected(peer) => {
//!             println!("connected to veltix {:?}", peer.version);
//!             let now = Instant::now();
//!             conn.request(now, MessageType::new(200), &b"hello"[..], Duration::from_secs(5))
//!                 .expect("request");
//!             conn.ping(now, Duration::from_secs(5)).expect("ping");
//!         }
//!         Event::Response { frame, .. } => reply = Some(frame.payload),
//!         Event::Pong { rtt: r, .. } => rtt = Some(r),
//!         Event::RequestFailed { reason, .. } => panic!("request failed: {reason}"),
//!         _ => {}
//!     }
//!     if reply.is_some() && rtt.is_some() {
//!         conn.close();
//!         return false;
//!     }
//!     true
//! })?;
//! drop(sock); // the server sees EOF and returns
//! server.join().expect("server thread")?;
//! assert_eq!(reply.as_deref(), Some(&b"hello"[..]));
//! assert!(rtt.is_some());
//! # Ok(())
//! # }
//! ```
//!
//! ## Where this port differs from the Python package
//!
//! * The handshake has **one deadline for the whole handshake**; Veltix
//!   applies its timeout per read, so a peer trickling bytes stays forever.
//! * The CRC is checked before the type filter (Veltix's compiled engine;
//!   the pure-Python engine checks the type first).
//! * A `pv` must match `^\d+\.\d+$` (Python's `int()` also accepts `" 1.0"`, `"+1.0"`).
//! * Request ids for requests come from a per-connection allocator on the
//!   server side (Veltix shares one per server); broadcasts draw one id per
//!   broadcast from the [`Acceptor`], as Veltix does.
//! * Replies are matched per connection: on a server, a reply counts only
//!   when it comes from the client the request went to.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod correlation;
pub mod decoder;
pub mod frame;
pub mod handshake;
pub mod payload;
pub mod retry;

mod connection;
mod error;
mod event;
mod json;
mod outbox;
mod server;

#[cfg(feature = "_fuzz")]
#[doc(hidden)]
pub mod fuzz;

pub use connection::{
    Connection, ConnectionConfig, ConnectionStats, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_OUTBOUND,
};
pub use correlation::{IdsExhausted, RequestKind};
pub use decoder::{
    Decoded, Decoder, DecoderConfig, DecoderStats, Discard, DiscardReason, TypeSet,
    DEFAULT_MAX_BUFFER_SIZE,
};
pub use error::SendError;
pub use event::{CloseReason, Event, RequestFailure};
pub use frame::{
    EncodedFrame, Frame, Header, MessageType, PayloadTooLarge, DEFAULT_MAX_MESSAGE_SIZE,
    HEADER_LEN, MAGIC,
};
pub use handshake::{HandshakeError, LocalHello, PeerHello, Side};
pub use payload::PayloadError;
pub use retry::{DisconnectReason, DisconnectState, RetryPolicy};
pub use server::{Acceptor, Rejection, Tags};
