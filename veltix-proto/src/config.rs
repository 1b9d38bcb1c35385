//! Client and server settings with Veltix's names and defaults, shared by the
//! drivers (`veltix-std`, `veltix-tokio`) so switching driver changes no config code.
//!
//! ```
//! use std::time::Duration;
//! use veltix_proto::config::{ClientConfig, ServerConfig};
//!
//! let client = ClientConfig::new("127.0.0.1", 8080)
//!     .retry(3)
//!     .retry_delay(Duration::from_millis(500))
//!     .handshake_timeout(Duration::from_secs(2));
//! client.validate().unwrap();
//!
//! let server = ServerConfig::new("0.0.0.0", 0).max_connection(Some(100));
//! server.validate().unwrap();
//! assert!(ServerConfig::default().max_connection(Some(0)).validate().is_err());
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::auth::{ClientAuth, ServerAuth};
use crate::connection::{
    ConnectionConfig, DEFAULT_BODY_TIMEOUT, DEFAULT_FLUSH_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT,
    DEFAULT_MAX_EVENT_BYTES, DEFAULT_MAX_OUTBOUND, DEFAULT_WRITE_TIMEOUT,
};
use crate::correlation::{DEFAULT_ID_WINDOW, MAX_ID_WINDOW};
use crate::decoder::{DecoderConfig, DEFAULT_MAX_BUFFER_SIZE};
use crate::frame::{DEFAULT_MAX_MESSAGE_SIZE, HEADER_LEN};
use crate::handshake::{Capability, LocalHello};
use crate::retry::{Backoff, RetryPolicy};

/// Veltix's default receive chunk (`BufferSize.MEDIUM`).
pub const DEFAULT_BUFFER_SIZE: usize = 8192;
/// Veltix's default callback pool size.
pub const DEFAULT_MAX_WORKERS: usize = 4;
/// Default `max_connection`: 10 000 connections.
pub const DEFAULT_MAX_CONNECTION: usize = 10_000;
/// Default server-wide budget for partial frames: 256 MiB.
pub const DEFAULT_MAX_BUFFERED_INPUT: usize = 256 * 1024 * 1024;
/// Veltix's default `send_and_wait` / ping timeout.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A setting out of range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {problem}")]
pub struct ConfigError {
    /// The setting.
    pub field: &'static str,
    /// What is wrong with it.
    pub problem: String,
}

fn check(ok: bool, field: &'static str, problem: &str) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError {
            field,
            problem: problem.to_owned(),
        })
    }
}

macro_rules! setters {
    ($t:ty { $($(#[$m:meta])* $name:ident : $ty:ty),* $(,)? }) => {
        impl $t {
            $(
                $(#[$m])*
                #[must_use]
                pub fn $name(mut self, value: $ty) -> Self {
                    self.$name = value;
                    self
                }
            )*
        }
    };
}

/// Our hello must fit what a peer accepts (30 KiB), or every peer would refuse it.
fn check_hello(hello: &LocalHello) -> Result<(), ConfigError> {
    let len = crate::handshake::encode_hello(hello).len() - 2;
    check(
        len < crate::handshake::MAX_HANDSHAKE_LEN,
        "hello",
        "the encoded hello (version and meta) must stay under 30 KiB",
    )
}

/// Deadlines shared by both sides (see [`ConnectionConfig`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deadlines {
    /// Output that makes no progress for this long: the peer is a slow
    /// consumer and is disconnected (default 30 s; `None`: never).
    pub write_timeout: Option<Duration>,
    /// A frame begun and not complete after this long cuts the connection
    /// (default 60 s; `None`: never).
    pub body_timeout: Option<Duration>,
    /// How long a graceful close may take to flush queued output (default 5 s).
    pub flush_timeout: Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            write_timeout: Some(DEFAULT_WRITE_TIMEOUT),
            body_timeout: Some(DEFAULT_BODY_TIMEOUT),
            flush_timeout: DEFAULT_FLUSH_TIMEOUT,
        }
    }
}

/// Settings shared by both sides.
fn connection_config(
    max_message_size: usize,
    handshake_timeout: Duration,
    strict: bool,
    hello: &LocalHello,
    id_window: u16,
    max_outbound: usize,
    deadlines: Deadlines,
) -> ConnectionConfig {
    ConnectionConfig {
        decoder: DecoderConfig {
            max_message_size,
            max_buffer_size: DEFAULT_MAX_BUFFER_SIZE.max(max_message_size.saturating_mul(2)),
            strict,
            accepted_types: None,
            ..DecoderConfig::default()
        },
        handshake_timeout,
        hello: hello.clone(),
        id_window,
        max_outbound,
        max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        write_timeout: deadlines.write_timeout,
        body_timeout: deadlines.body_timeout,
        flush_timeout: deadlines.flush_timeout,
        ..ConnectionConfig::default()
    }
}

/// Validation shared by both sides.
fn validate_common(
    buffer_size: usize,
    max_message_size: usize,
    handshake_timeout: Duration,
    max_workers: usize,
    max_outbound: usize,
) -> Result<(), ConfigError> {
    check(buffer_size > 0, "buffer_size", "must be > 0")?;
    check(
        max_message_size >= HEADER_LEN,
        "max_message_size",
        "must be at least the 15-byte header",
    )?;
    check(
        !handshake_timeout.is_zero(),
        "handshake_timeout",
        "must be > 0",
    )?;
    check(max_workers >= 1, "max_workers", "must be >= 1")?;
    check(max_outbound > 0, "max_outbound", "must be > 0")
}

/// Client settings (Veltix's `ClientConfig`).
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Server host name or address (default `127.0.0.1`).
    pub server_addr: String,
    /// Server port (default 8080).
    pub port: u16,
    /// Bytes read per `recv` (default 8192, Veltix's). A driver may read more
    /// per call: a busy `veltix-std` connection grows its reads to 64 KiB.
    pub buffer_size: usize,
    /// Largest frame accepted, header included (default 10 MiB).
    pub max_message_size: usize,
    /// Deadline for TCP connect and for the whole handshake (default 5 s).
    pub handshake_timeout: Duration,
    /// Handlers running at once (default 4, Veltix's): `veltix-std` runs
    /// them on this many pool threads; `veltix-tokio` lets this many run
    /// concurrently (a client's handlers run one at a time anyway: they are
    /// in order per connection).
    pub max_workers: usize,
    /// Reconnect attempts after a failure (default 0).
    pub retry: u32,
    /// Delay between attempts (default 1 s).
    pub retry_delay: Duration,
    /// Optional exponential backoff on top of `retry_delay`.
    pub backoff: Option<Backoff>,
    /// Seed of the backoff jitter (`None`: drivers pick one).
    pub retry_seed: Option<u64>,
    /// Default timeout of `send_and_wait` and `ping_server` (default 5 s).
    pub request_timeout: Duration,
    /// Cap on outbound bytes accepted and not yet written (default 4 MiB).
    pub max_outbound: usize,
    /// Close on the first corrupt frame instead of resynchronising (default off).
    pub strict: bool,
    /// Our hello (`v`, `meta`).
    pub hello: LocalHello,
    /// Write, body and flush deadlines.
    pub deadlines: Deadlines,
    /// Capabilities we want, negotiated with servers that offer them.
    pub capabilities: Vec<Capability>,
    /// Credentials and authentication policy (default none: a server that
    /// requires authentication refuses us).
    pub auth: Option<ClientAuth>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            server_addr: "127.0.0.1".into(),
            port: 8080,
            buffer_size: DEFAULT_BUFFER_SIZE,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_workers: DEFAULT_MAX_WORKERS,
            retry: 0,
            retry_delay: Duration::from_secs(1),
            backoff: None,
            retry_seed: None,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_outbound: DEFAULT_MAX_OUTBOUND,
            strict: false,
            hello: LocalHello::default(),
            deadlines: Deadlines::default(),
            capabilities: Vec::new(),
            auth: None,
        }
    }
}

setters!(ClientConfig {
    /// Sets `server_addr`.
    server_addr: String,
    /// Sets `port`.
    port: u16,
    /// Sets `buffer_size`.
    buffer_size: usize,
    /// Sets `max_message_size`.
    max_message_size: usize,
    /// Sets `handshake_timeout`.
    handshake_timeout: Duration,
    /// Sets `max_workers`.
    max_workers: usize,
    /// Sets `retry`.
    retry: u32,
    /// Sets `capabilities`.
    capabilities: Vec<Capability>,
    /// Sets `auth`.
    auth: Option<ClientAuth>,
    /// Sets `retry_delay`.
    retry_delay: Duration,
    /// Sets `backoff`.
    backoff: Option<Backoff>,
    /// Sets `retry_seed`.
    retry_seed: Option<u64>,
    /// Sets `request_timeout`.
    request_timeout: Duration,
    /// Sets `max_outbound`.
    max_outbound: usize,
    /// Sets `strict`.
    strict: bool,
    /// Sets `hello`.
    hello: LocalHello,
    /// Sets `deadlines`.
    deadlines: Deadlines,
});

impl ClientConfig {
    /// A config for `server_addr:port`, other settings at their defaults.
    pub fn new(server_addr: impl Into<String>, port: u16) -> Self {
        ClientConfig {
            server_addr: server_addr.into(),
            port,
            ..Self::default()
        }
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(
            !self.server_addr.is_empty(),
            "server_addr",
            "must not be empty",
        )?;
        validate_common(
            self.buffer_size,
            self.max_message_size,
            self.handshake_timeout,
            self.max_workers,
            self.max_outbound,
        )?;
        check(
            !self.request_timeout.is_zero(),
            "request_timeout",
            "must be > 0",
        )?;
        if let Some(b) = self.backoff {
            check(
                b.factor.is_finite() && b.factor >= 1.0,
                "backoff.factor",
                "must be a finite number >= 1",
            )?;
            check(
                b.jitter.is_finite() && (0.0..=1.0).contains(&b.jitter),
                "backoff.jitter",
                "must be in [0, 1]",
            )?;
        }
        check_hello(&self.hello)
    }

    /// The core's connection settings.
    pub fn connection_config(&self) -> Arc<ConnectionConfig> {
        let mut c = connection_config(
            self.max_message_size,
            self.handshake_timeout,
            self.strict,
            &self.hello,
            DEFAULT_ID_WINDOW,
            self.max_outbound,
            self.deadlines,
        );
        c.capabilities.clone_from(&self.capabilities);
        c.client_auth.clone_from(&self.auth);
        Arc::new(c)
    }

    /// Seeds the nonce generator of [`auth`](Self::auth), if any (drivers
    /// call it with 32 bytes from the operating system; only the first seed
    /// counts).
    pub fn seed_auth(&self, seed: [u8; 32]) {
        if let Some(a) = &self.auth {
            a.seed(seed);
        }
    }

    /// The reconnect policy (backoff sanitized: factor `>= 1`, jitter in `[0, 1]`).
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            max_retries: self.retry,
            delay: self.retry_delay,
            backoff: self.backoff,
        }
        .sanitized()
    }
}

/// Server settings (Veltix's `ServerConfig`).
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address to listen on (default `0.0.0.0`).
    pub host: String,
    /// Port (default 8080; 0 picks a free one).
    pub port: u16,
    /// Bytes read per `recv` (default 8192, Veltix's). A driver may read more
    /// per call: a busy `veltix-std` connection grows its reads to 64 KiB.
    pub buffer_size: usize,
    /// Connections allowed at once, handshaking ones included; `None` =
    /// unlimited (Veltix's `-1`, its default). Default here:
    /// [`DEFAULT_MAX_CONNECTION`], so that a flood of connects meets a
    /// `server_full` refusal before it meets the process's file-descriptor
    /// or thread limits (drivers lower it further to fit the fd limit).
    pub max_connection: Option<usize>,
    /// Largest frame accepted, header included (default 10 MiB).
    pub max_message_size: usize,
    /// Deadline for each client's whole handshake (default 5 s).
    pub handshake_timeout: Duration,
    /// Handlers running at once (default 4, Veltix's): `veltix-std` runs
    /// them on this many pool threads; `veltix-tokio` lets this many run
    /// concurrently (a client's handlers run one at a time anyway: they are
    /// in order per connection).
    pub max_workers: usize,
    /// Request-id window for server-initiated requests (default 30 000, capped at 32 768).
    pub id_window: u16,
    /// Default timeout of `send_and_wait` and `ping_client` (default 5 s).
    pub request_timeout: Duration,
    /// Cap on outbound bytes accepted and not yet written, per connection (default 4 MiB).
    pub max_outbound: usize,
    /// Close a connection on its first corrupt frame (default off).
    pub strict: bool,
    /// Our hello (`v`, `meta`).
    pub hello: LocalHello,
    /// Write, body and flush deadlines of every connection.
    pub deadlines: Deadlines,
    /// Server-wide cap on received bytes buffered in partial frames
    /// (default 256 MiB). Past it the connection holding the largest
    /// partial frame is cut ([`CloseReason::BufferBudget`](crate::CloseReason)).
    pub max_buffered_input: usize,
    /// Capabilities we offer in the handshake.
    pub capabilities: Vec<Capability>,
    /// Authentication policy and credential store (default none: every
    /// peer is anonymous, as with Python veltix).
    pub auth: Option<ServerAuth>,
    /// What to do when an identity that is connected authenticates again
    /// (default: allow both).
    pub duplicate_identity: DuplicateIdentity,
}

/// What a server does when an authenticated identity connects while
/// another connection of the same identity is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum DuplicateIdentity {
    /// Both stay connected.
    #[default]
    Allow,
    /// The new connection is refused (`identity_in_use`, before its ack).
    Refuse,
    /// The old connection is closed ([`CloseReason::Replaced`](crate::CloseReason::Replaced)).
    Replace,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "0.0.0.0".into(),
            port: 8080,
            buffer_size: DEFAULT_BUFFER_SIZE,
            max_connection: Some(DEFAULT_MAX_CONNECTION),
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_workers: DEFAULT_MAX_WORKERS,
            id_window: DEFAULT_ID_WINDOW,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_outbound: DEFAULT_MAX_OUTBOUND,
            strict: false,
            hello: LocalHello::default(),
            deadlines: Deadlines::default(),
            max_buffered_input: DEFAULT_MAX_BUFFERED_INPUT,
            capabilities: Vec::new(),
            auth: None,
            duplicate_identity: DuplicateIdentity::Allow,
        }
    }
}

setters!(ServerConfig {
    /// Sets `host`.
    host: String,
    /// Sets `port`.
    port: u16,
    /// Sets `buffer_size`.
    buffer_size: usize,
    /// Sets `max_connection`.
    max_connection: Option<usize>,
    /// Sets `max_message_size`.
    max_message_size: usize,
    /// Sets `handshake_timeout`.
    handshake_timeout: Duration,
    /// Sets `max_workers`.
    max_workers: usize,
    /// Sets `id_window`.
    id_window: u16,
    /// Sets `request_timeout`.
    request_timeout: Duration,
    /// Sets `max_outbound`.
    max_outbound: usize,
    /// Sets `strict`.
    strict: bool,
    /// Sets `hello`.
    hello: LocalHello,
    /// Sets `deadlines`.
    deadlines: Deadlines,
    /// Sets `max_buffered_input`.
    max_buffered_input: usize,
    /// Sets `capabilities`.
    capabilities: Vec<Capability>,
    /// Sets `auth`.
    auth: Option<ServerAuth>,
    /// Sets `duplicate_identity`.
    duplicate_identity: DuplicateIdentity,
});

impl ServerConfig {
    /// A config listening on `host:port`, other settings at their defaults.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        ServerConfig {
            host: host.into(),
            port,
            ..Self::default()
        }
    }

    /// Checks every setting.
    ///
    /// # Errors
    /// The first [`ConfigError`] found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check(!self.host.is_empty(), "host", "must not be empty")?;
        validate_common(
            self.buffer_size,
            self.max_message_size,
            self.handshake_timeout,
            self.max_workers,
            self.max_outbound,
        )?;
        check(
            self.max_connection != Some(0),
            "max_connection",
            "must be >= 1, or None for unlimited",
        )?;
        check(self.id_window >= 1, "id_window", "must be >= 1")?;
        check(
            !self.request_timeout.is_zero(),
            "request_timeout",
            "must be > 0",
        )?;
        check_hello(&self.hello)
    }

    /// `max_connection` lowered to fit a process limit of `fd_limit` open
    /// files (one per connection, 64 kept for everything else), so that a
    /// flood of connects meets `server_full` instead of "too many open
    /// files". `None` (unlimited, set explicitly) stays unlimited. Drivers
    /// call this with the OS limit when they start.
    ///
    /// ```
    /// use veltix_proto::ServerConfig;
    /// let c = ServerConfig::default(); // 10 000
    /// assert_eq!(c.max_connection_for_fds(1024), Some(960));
    /// assert_eq!(c.max_connection_for_fds(1 << 20), Some(10_000));
    /// assert_eq!(c.max_connection_for_fds(10), Some(1));
    /// assert_eq!(c.max_connection(None).max_connection_for_fds(1024), None);
    /// ```
    pub fn max_connection_for_fds(&self, fd_limit: u64) -> Option<usize> {
        const RESERVED_FDS: u64 = 64;
        let fit = usize::try_from(fd_limit.saturating_sub(RESERVED_FDS))
            .unwrap_or(usize::MAX)
            .max(1);
        self.max_connection.map(|m| m.min(fit))
    }

    /// Seeds the nonce generator of [`auth`](Self::auth), if any (drivers
    /// call it with 32 bytes from the operating system; only the first seed
    /// counts).
    pub fn seed_auth(&self, seed: [u8; 32]) {
        if let Some(a) = &self.auth {
            a.seed(seed);
        }
    }

    /// The core's connection settings (`id_window` capped at 32 768).
    pub fn connection_config(&self) -> Arc<ConnectionConfig> {
        if self.id_window > MAX_ID_WINDOW {
            tracing::warn!(id_window = self.id_window, "id_window capped at 32768");
        }
        let mut c = connection_config(
            self.max_message_size,
            self.handshake_timeout,
            self.strict,
            &self.hello,
            self.id_window.min(MAX_ID_WINDOW),
            self.max_outbound,
            self.deadlines,
        );
        c.capabilities.clone_from(&self.capabilities);
        c.server_auth.clone_from(&self.auth);
        c.hold_authenticated =
            self.auth.is_some() && self.duplicate_identity == DuplicateIdentity::Refuse;
        Arc::new(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veltix_defaults() {
        let c = ClientConfig::default();
        assert_eq!((c.server_addr.as_str(), c.port), ("127.0.0.1", 8080));
        assert_eq!(c.max_message_size, 10 * 1024 * 1024);
        assert_eq!((c.retry, c.retry_delay), (0, Duration::from_secs(1)));
        let s = ServerConfig::default();
        assert_eq!(
            (s.host.as_str(), s.max_connection, s.id_window),
            ("0.0.0.0", Some(DEFAULT_MAX_CONNECTION), 30_000)
        );
        c.validate().unwrap();
        s.validate().unwrap();
    }

    #[test]
    fn invalid_settings_name_the_field() {
        let e = ClientConfig::default()
            .max_workers(0)
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "max_workers");
        let e = ServerConfig::default()
            .handshake_timeout(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "handshake_timeout");
        let e = ServerConfig::default()
            .max_message_size(3)
            .validate()
            .unwrap_err();
        assert_eq!(e.field, "max_message_size");
    }

    #[test]
    fn bad_backoff_and_huge_hello_are_refused() {
        use crate::retry::Backoff;
        let bad = |factor, jitter| {
            ClientConfig::default()
                .backoff(Some(Backoff {
                    factor,
                    max_delay: Duration::from_secs(1),
                    jitter,
                }))
                .validate()
                .unwrap_err()
                .field
        };
        assert_eq!(bad(-2.0, 0.0), "backoff.factor");
        assert_eq!(bad(f64::NAN, 0.0), "backoff.factor");
        assert_eq!(bad(2.0, 3.0), "backoff.jitter");
        let mut hello = LocalHello::default();
        hello
            .meta
            .insert("pad".into(), serde_json::Value::String("x".repeat(40_000)));
        let e = ServerConfig::default().hello(hello).validate().unwrap_err();
        assert_eq!(e.field, "hello");
    }

    #[test]
    fn large_frames_fit_the_receive_buffer() {
        let cc = ClientConfig::default()
            .max_message_size(64 << 20)
            .connection_config();
        assert!(cc.decoder.max_buffer_size >= 2 * (64 << 20));
        let sc = ServerConfig::default()
            .id_window(60_000)
            .connection_config();
        assert_eq!(sc.id_window, 32_768);
    }
}
