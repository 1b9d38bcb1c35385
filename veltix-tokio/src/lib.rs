//! # veltix-tokio: async Veltix client and server on tokio
//!
//! A thin driver over [`veltix_proto`]: one task per connection drives the
//! sans-IO core with `select!` over socket readiness, the core's
//! `poll_timeout` (`sleep_until`) and wake-ups from commands. Every protocol
//! rule lives in the core, and the configuration, message, payload and error
//! types are the core's, shared with `veltix-std`: switching driver is a
//! change of import (and of `.await`s).
//!
//! * [`Client`]: `connect(config).await`, `send` (waits while the bounded
//!   queue is full) / `try_send` (typed "queue full" error), `request`
//!   (Veltix's `send_and_wait`; cancellation-safe: dropping it frees the id),
//!   `ping`, `recv` for messages and lifecycle events, routes, reconnect per
//!   the same retry/backoff policy and `DisconnectState`s as `veltix-std`,
//!   `disconnect`. Dropping the last clone ends its tasks.
//! * [`Server`]: `bind(config).await`, `recv` for peers' events, routes,
//!   `send`/`try_send`, `broadcast` (encoded once), `request` to one peer
//!   (only that peer's reply counts), `ping`, tags on [`Peer`],
//!   `clients_by_tag`, `close_client`, and `shutdown`, which flushes queued
//!   frames (with a deadline) and waits for every task.
//!
//! Messages from one peer are delivered in the order they were sent.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), veltix_tokio::Error> {
//! use std::time::Duration;
//! use veltix_tokio::{Client, ClientConfig, MessageType, Server, ServerConfig, ServerEvent};
//!
//! const ECHO: MessageType = MessageType::new(200);
//!
//! let server = Server::bind(ServerConfig::new("127.0.0.1", 0)).await?;
//! let port = server.local_addr().port();
//! let s = server.clone();
//! tokio::spawn(async move {
//!     while let Some(event) = s.recv().await {
//!         if let ServerEvent::Message(peer, msg) = event {
//!             let _ = s.reply(&peer, &msg, ECHO, msg.payload.clone());
//!         }
//!     }
//! });
//!
//! let client = Client::connect(ClientConfig::new("127.0.0.1", port)).await?;
//! let reply = client.request(ECHO, "hello", Some(Duration::from_secs(5))).await?;
//! assert_eq!(reply.text()?, "hello");
//! let rtt = client.ping(None).await?;
//! println!("rtt {rtt:?}");
//! client.disconnect().await;
//! server.shutdown(Duration::from_secs(1)).await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod conn;
mod server;

pub use client::{Client, ClientEvent};
pub use server::{Peer, Server, ServerEvent};
pub use veltix_proto::config::{ClientConfig, ServerConfig};
pub use veltix_proto::payload;
pub use veltix_proto::retry::{Backoff, RetryPolicy};
pub use veltix_proto::{
    CloseReason, DisconnectReason, DisconnectState, Error, Frame, HandshakeError, LocalHello,
    MessageType, PeerHello, SendError, SharedTags, Tags,
};

/// Locks a std mutex, ignoring poisoning (no critical section here can leave
/// its data half-updated, and user callbacks never run under a lock).
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The README's code blocks, compiled and run as doctests (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
