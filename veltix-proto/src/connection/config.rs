//! The limits and deadlines of a [`Connection`](super::Connection)
//! ([`ConnectionConfig`]), its counters ([`ConnectionStats`]) and defaults.

use std::time::Duration;

use crate::auth::{ClientAuth, ServerAuth};
use crate::correlation::DEFAULT_ID_WINDOW;
use crate::decoder::{DecoderConfig, DecoderStats};
use crate::handshake::{Capability, LocalHello};

/// Default handshake deadline (Veltix's `handshake_timeout`, 5 s), applied to
/// the **whole** handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default cap on bytes accepted for sending and not yet reported written
/// (4 MiB): what one peer that stops reading can make us hold. (The
/// buffers behind those bytes can be up to about twice as large: a payload
/// echoed without copying keeps its receive buffer alive.)
pub const DEFAULT_MAX_OUTBOUND: usize = 4 * 1024 * 1024;
/// Default cap on the bytes of events queued and not yet taken (1 MiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1024 * 1024;
/// Default write deadline (30 s): queued output that makes no progress for
/// this long marks the peer a slow consumer.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Default body deadline (60 s): a frame started but not complete after this long.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(60);
/// Default flush deadline of a local close (5 s).
pub const DEFAULT_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes a driver may hold (taken with `poll_transmit`, not yet reported with
/// `handle_written`) before `poll_transmit` gives no more: 256 KiB.
pub const TRANSMIT_WINDOW: usize = 256 * 1024;

/// Per-event overhead counted against [`ConnectionConfig::max_event_bytes`].
pub(super) const EVENT_OVERHEAD: usize = 64;

/// Settings of a connection. Share one between many connections with an `Arc`.
///
/// ```
/// use std::time::Duration;
/// use veltix_proto::ConnectionConfig;
/// let mut config = ConnectionConfig::default();
/// config.handshake_timeout = Duration::from_secs(2);
/// config.decoder.max_message_size = 1 << 20;
/// assert_eq!(config.id_window, 30_000);
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Receive limits, strict mode and accepted types.
    pub decoder: DecoderConfig,
    /// Deadline for the whole handshake, from the connection's creation.
    pub handshake_timeout: Duration,
    /// What we announce in our hello.
    pub hello: LocalHello,
    /// Server side: size of the request-id window (capped at 32 768).
    pub id_window: u16,
    /// Cap on outbound bytes accepted and not yet reported written by the
    /// driver; beyond it `send` fails with [`SendError::QueueFull`](crate::SendError::QueueFull) and PINGs
    /// go unanswered (counted). A single frame is always accepted into an
    /// empty queue, whatever its size.
    pub max_outbound: usize,
    /// Cap on the bytes of queued events (payloads plus a small overhead
    /// each). At the cap the connection stops decoding and
    /// [`Connection::wants_input`](super::Connection::wants_input) turns false until events are taken; timers
    /// still run.
    pub max_event_bytes: usize,
    /// Output that makes no progress for this long closes the connection
    /// with [`CloseReason::SlowConsumer`](crate::CloseReason::SlowConsumer). `None`: never.
    pub write_timeout: Option<Duration>,
    /// A frame begun but not complete after this long closes the connection
    /// with [`CloseReason::BodyTimeout`](crate::CloseReason::BodyTimeout). `None`: never.
    pub body_timeout: Option<Duration>,
    /// After a local [`close`](super::Connection::close), how long queued output
    /// may take to drain before it is dropped (and reported as unsent).
    pub flush_timeout: Duration,
    /// Capabilities offered (server) or wanted (client) in the handshake
    /// (see [`handshake`](crate::handshake)).
    pub capabilities: Vec<Capability>,
    /// Server: authentication policy and credential store. `None`: no
    /// authentication (peers are anonymous).
    pub server_auth: Option<ServerAuth>,
    /// Client: credentials and policy. `None`: no credentials, any server
    /// that does not require authentication is accepted.
    pub client_auth: Option<ClientAuth>,
    /// Server: hold an authenticated peer before its ack until the owner
    /// calls [`Connection::admit`](super::Connection::admit) or
    /// [`refuse`](super::Connection::refuse) (see
    /// [`held_identity`](super::Connection::held_identity)). The [`Hub`](crate::Hub)
    /// sets it to refuse a second connection of one identity.
    pub hold_authenticated: bool,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            decoder: DecoderConfig::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            hello: LocalHello::default(),
            id_window: DEFAULT_ID_WINDOW,
            max_outbound: DEFAULT_MAX_OUTBOUND,
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
            write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
            body_timeout: Some(DEFAULT_BODY_TIMEOUT),
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
            capabilities: Vec::new(),
            server_auth: None,
            client_auth: None,
            hold_authenticated: false,
        }
    }
}

/// Counters of one connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// Bytes given to `handle_input`.
    pub bytes_in: u64,
    /// Bytes handed out by `poll_transmit`.
    pub bytes_out: u64,
    /// Bytes the driver reported written with `handle_written`.
    pub bytes_written: u64,
    /// Frames received intact (PINGs included).
    pub frames_in: u64,
    /// Frames queued for sending (PONGs included).
    pub frames_out: u64,
    /// PINGs left unanswered because the outbound queue was full.
    pub pongs_dropped: u64,
    /// The decoder's counters.
    pub decoder: DecoderStats,
}
