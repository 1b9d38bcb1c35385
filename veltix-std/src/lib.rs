//! # veltix-std: blocking Veltix client and server on std threads
//!
//! A thin driver over [`veltix_proto`]: it moves bytes and time between
//! `std::net` sockets and the sans-IO core, and runs your callbacks. Every
//! protocol rule (framing, handshake, ids, deadlines, PONGs) lives in the core.
//! It speaks the same wire as the Python `veltix` package 3.x, so either side
//! of a deployment can be replaced.
//!
//! * [`Client`]: `connect`, `send`, `send_and_wait`, `ping_server`, routes,
//!   `on_recv`/`on_connect`/`on_disconnect`, reconnect per [`ClientConfig`]'s
//!   `retry`/`retry_delay` (and optional backoff), `disconnect`.
//! * [`Server`]: `start`, routes and callbacks, `send`, `broadcast` (encoded
//!   once, to connected clients only), `send_and_wait` (a reply counts only
//!   from that client), `ping_client`, tags on [`ClientInfo`],
//!   `clients_by_tag`, `close_client`, `close_all`; `max_connection` refuses
//!   extra clients with `server_full`.
//!
//! Threads: each connection has a reader and a writer thread; callbacks run on
//! a pool of `max_workers` threads, serially per connection and in arrival
//! order (unlike Python veltix, whose pool reorders). A panicking callback is
//! caught and logged, and the connection goes on. Frames queued while a write
//! is in flight leave together in one syscall.
//!
//! ```
//! use std::time::Duration;
//! use veltix_std::{Client, ClientConfig, MessageType, Server, ServerConfig};
//!
//! const ECHO: MessageType = MessageType::new(200);
//!
//! let server = Server::new(ServerConfig::new("127.0.0.1", 0)).unwrap();
//! server.route(ECHO, |server, client, msg| {
//!     server.reply(client, &msg, ECHO, msg.payload.clone()).unwrap();
//! });
//! server.start().unwrap();
//! let port = server.local_addr().unwrap().port();
//!
//! let client = Client::new(ClientConfig::new("127.0.0.1", port)).unwrap();
//! client.connect().unwrap();
//! let reply = client.send_and_wait(ECHO, "hello", Some(Duration::from_secs(5))).unwrap();
//! assert_eq!(reply.text().unwrap(), "hello");
//! assert!(client.ping_server(None).is_some());
//!
//! client.disconnect();
//! server.close_all();
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod client;
mod link;
mod pool;
mod server;

pub use client::Client;
pub use server::{ClientInfo, Server};
pub use veltix_proto::config::{ClientConfig, ServerConfig};
pub use veltix_proto::payload;
pub use veltix_proto::retry::{Backoff, RetryPolicy};
pub use veltix_proto::{
    CloseReason, DisconnectReason, DisconnectState, Error, Frame, HandshakeError, LocalHello,
    MessageType, PeerHello, SharedTags, Tags,
};

/// The README's code blocks, compiled and run as doctests (`cargo test --doc`).
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
