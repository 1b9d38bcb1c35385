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
//! | [`handshake`] | the JSON handshake state machines, version rule, rejection, capability negotiation ([`Capability`], [`Negotiated`]) |
//! | [`auth`] | authentication in the handshake: SCRAM-SHA-256 and bearer tokens ([`ServerAuth`], [`ClientAuth`], [`CredentialStore`], [`Identity`]); see `SECURITY.md` |
//! | [`correlation`] | request-id allocation and the pending-request table |
//! | [`retry`] | reconnect policy: fixed delay (Veltix) or backoff with seeded jitter |
//! | [`Connection`] | one connection, client or server, in the style of quinn-proto |
//! | [`Tags`] | per-peer tags |
//! | [`ClientSession`] | the reconnecting client: retry policy, attempts, `DisconnectState` reports, one `Connection` at a time |
//! | [`Hub`] | the server: admission, registry by [`PeerId`], tags, broadcast targeting, fair event service, timers of all peers, receive budget |
//! | [`payload`] | text and Python-compatible JSON payloads |
//! | [`config`], [`Router`] | Veltix's client/server settings and dispatch rule, shared by the drivers |
//!
//! A driver embeds a [`ClientSession`] (client) or a [`Hub`] (server); both
//! follow the [`Connection`] contract below, per transport.
//!
//! ## The calling contract
//!
//! A [`Connection`] is created when the TCP connection exists
//! ([`Connection::client`] after `connect`, [`Connection::server`] after
//! `accept`; a session or hub creates its own). From then on the driver repeats:
//!
//! 1. **Output.** Take chunks from [`Connection::poll_transmit`], write them
//!    in order, and report every byte written with
//!    [`Connection::handle_written`]. Bytes count against `max_outbound`
//!    until reported, and `poll_transmit` gives nothing more while the
//!    driver holds [`TRANSMIT_WINDOW`] unreported bytes: a driver cannot
//!    hoard output, and a peer that stops reading makes `send` refuse
//!    ([`SendError::QueueFull`]) with memory bounded by configuration.
//! 2. **Events.** Take [`Event`]s from [`Connection::poll_event`]:
//!    requests' outcomes (`Response`, `Pong`, `RequestFailed`) first, then
//!    `Connected`, `Message`, diagnostics (`Discarded`, `PongDropped`), and
//!    finally `Closed`. Queued events are bounded (`max_event_bytes`): at
//!    the cap the core stops decoding, [`Connection::wants_input`] turns
//!    false, and the driver stops reading until events are taken. A driver
//!    whose application is busy can still take outcomes alone with
//!    [`Connection::poll_completion`]. Taking events may queue output
//!    (PONGs of frames decoded late): check `poll_transmit` again.
//! 3. **Wait** for input (only while `wants_input`), for writability (only
//!    while the driver holds unwritten bytes), and no later than
//!    [`Connection::poll_timeout`]. That is "now" exactly while
//!    `poll_transmit` has bytes to give ([`Connection::has_transmit`]), and
//!    otherwise the next timer ([`Connection::next_timer`]): handshake,
//!    request, ping, write (slow consumer), body and flush deadlines. So a
//!    driver that cannot write, holding the transmit window, never spins:
//!    it waits for writability or the next real deadline. `None` means no
//!    deadline.
//! 4. **Input.** Bytes read go to [`Connection::handle_input`]; a read of 0
//!    bytes to [`Connection::handle_eof`]; an I/O error to
//!    [`Connection::handle_transport_error`] (its `ErrorKind` is kept); a
//!    passed deadline to [`Connection::handle_timeout`] (calling it early or
//!    twice is harmless). Deadlines fire whether or not anybody took the
//!    pending events.
//! 5. **End.** When [`Connection::is_finished`] is true (after the
//!    `Closed` event is queued), drop the transport.
//!
//! Commands ([`send`](Connection::send), [`request`](Connection::request),
//! [`reply`](Connection::reply), [`ping`](Connection::ping),
//! [`close`](Connection::close)) may be issued at any point between steps;
//! after one, go back to step 1. A local `close` drains queued output
//! within `flush_timeout`, then reports what could not be written in
//! `Closed::unsent_bytes`.
//!
//! **Time.** Every method that needs the time takes `now: Instant` from the
//! caller; the core never reads a clock. `now` should not go backwards (an
//! earlier value is treated as the latest one seen). A simulation can start
//! from any `Instant` and add virtual durations.
//!
//! **Guarantees.** No input from the peer can panic the core or grow its
//! memory past the configured caps (receive buffer, outbound bytes, queued
//! events, handshake message size). Every request ends exactly once: with a
//! `Response`/`Pong`, or with `RequestFailed` (deadline, or the connection
//! closed). A refused command returns a [`SendError`] and queues nothing.
//! Application message types start at 200: `send`, `request` and `reply`
//! refuse the protocol's range with [`SendError::ReservedType`]
//! (`send_system` is there for tools and tests).
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
//!   broadcast from the [`Hub`], as Veltix does.
//! * Every wait has a deadline: output that makes no progress (a peer that
//!   stopped reading), a frame body that does not arrive, a close that
//!   cannot flush. Python veltix has none of these.
//! * Replies are matched per connection: on a server, a reply counts only
//!   when it comes from the client the request went to.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod auth;
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
pub mod hub;
mod json;
mod outbox;
mod router;
mod server;
pub mod session;

#[cfg(feature = "_fuzz")]
#[doc(hidden)]
pub mod fuzz;

pub use auth::{AuthMethod, ClientAuth, CredentialStore, Identity, MemoryStore, ServerAuth};
pub use config::Deadlines;
pub use config::{ClientConfig, ConfigError, DuplicateIdentity, ServerConfig};
pub use connection::{
    Connection, ConnectionConfig, ConnectionStats, DEFAULT_BODY_TIMEOUT, DEFAULT_FLUSH_TIMEOUT,
    DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_OUTBOUND,
    DEFAULT_WRITE_TIMEOUT, TRANSMIT_WINDOW,
};
pub use correlation::{IdsExhausted, RequestKind};
pub use decoder::{
    Decoded, DecodedRef, Decoder, DecoderConfig, DecoderStats, Discard, DiscardReason, TypeSet,
    DEFAULT_MAX_BUFFER_SIZE,
};
pub use driver_error::{Error, Wait};
pub use error::SendError;
pub use event::{CloseReason, Event, Reply, RequestFailure, Routed};
pub use frame::{
    EncodedFrame, Frame, Header, MessageType, PayloadTooLarge, DEFAULT_MAX_MESSAGE_SIZE,
    HEADER_LEN, MAGIC,
};
pub use handshake::{Capability, HandshakeError, LocalHello, Negotiated, PeerHello, Side};
pub use hub::HubStats;
pub use hub::{Broadcast, Hub, HubEvent, PeerId, Target};
pub use payload::PayloadError;
pub use retry::{Backoff, DisconnectReason, DisconnectState, RetryPolicy};
pub use router::Router;
pub use server::{Rejection, Tags};
pub use session::{ClientSession, Dial, SessionEvent};

/// The README's code blocks, compiled and run as doctests (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
