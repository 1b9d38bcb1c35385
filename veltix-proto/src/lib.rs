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
//! | [`config`], [`Router`] | Veltix's client/server settings and dispatch rule, shared by the drivers |
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
//! The whole file `examples/event_loop.rs` (run it with
//! `cargo run -p veltix-proto --example event_loop`):
//!
#![doc = concat!("```\n", include_str!("../examples/event_loop.rs"), "```")]
//!
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

pub mod config;
pub mod correlation;
pub mod decoder;
pub mod frame;
pub mod handshake;
pub mod payload;
pub mod retry;

mod connection;
mod driver_error;
mod error;
mod event;
mod json;
mod outbox;
mod router;
mod server;

#[cfg(feature = "_fuzz")]
#[doc(hidden)]
pub mod fuzz;

pub use config::{ClientConfig, ConfigError, ServerConfig};
pub use connection::{
    Connection, ConnectionConfig, ConnectionStats, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_OUTBOUND,
};
pub use correlation::{IdsExhausted, RequestKind};
pub use decoder::{
    Decoded, DecodedRef, Decoder, DecoderConfig, DecoderStats, Discard, DiscardReason, TypeSet,
    DEFAULT_MAX_BUFFER_SIZE,
};
pub use driver_error::Error;
pub use error::SendError;
pub use event::{CloseReason, Event, Reply, RequestFailure, Routed};
pub use frame::{
    EncodedFrame, Frame, Header, MessageType, PayloadTooLarge, DEFAULT_MAX_MESSAGE_SIZE,
    HEADER_LEN, MAGIC,
};
pub use handshake::{HandshakeError, LocalHello, PeerHello, Side};
pub use payload::PayloadError;
pub use retry::{DisconnectReason, DisconnectState, RetryPolicy};
pub use router::Router;
pub use server::{Acceptor, Rejection, SharedTags, Tags};

/// The README's code blocks, compiled and run as doctests (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
