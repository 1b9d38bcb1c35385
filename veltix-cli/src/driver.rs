//! `--driver std|tokio`: the client commands on either driver, through one
//! blocking facade. Both drivers have the same API (tokio's is async), so
//! each method is one call on each side.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use clap::ValueEnum;
use veltix_proto::{ClientConfig, Error, Frame, MessageType};
use veltix_tls::{ClientTls, TlsInfo};

/// Which driver runs a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DriverKind {
    /// `veltix-std`: blocking, one I/O thread (mio) and a callback pool.
    #[default]
    Std,
    /// `veltix-tokio`: async, on a tokio runtime.
    Tokio,
}

impl DriverKind {
    /// `std` or `tokio`.
    pub fn name(self) -> &'static str {
        match self {
            DriverKind::Std => "std",
            DriverKind::Tokio => "tokio",
        }
    }
}

/// A tokio runtime for one command (current thread: these commands are sequential).
pub fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

/// A connected client of either driver.
pub enum AnyClient {
    /// On veltix-std.
    Std(veltix_std::Client),
    /// On veltix-tokio, with the runtime that drives it.
    Tokio(Box<tokio::runtime::Runtime>, veltix_tokio::Client),
}

impl AnyClient {
    /// Creates a client on `driver` and connects it (retries per `config`).
    pub fn connect(
        driver: DriverKind,
        config: ClientConfig,
        tls: Option<ClientTls>,
    ) -> Result<AnyClient, Error> {
        match driver {
            DriverKind::Std => {
                let c = match tls {
                    Some(tls) => veltix_std::Client::with_tls(config, tls)?,
                    None => veltix_std::Client::new(config)?,
                };
                c.connect()?;
                Ok(AnyClient::Std(c))
            }
            DriverKind::Tokio => {
                let rt = runtime()?;
                let c = {
                    let _rt = rt.enter();
                    match tls {
                        Some(tls) => veltix_tokio::Client::with_tls(config, tls)?,
                        None => veltix_tokio::Client::new(config)?,
                    }
                };
                rt.block_on(c.connect())?;
                Ok(AnyClient::Tokio(Box::new(rt), c))
            }
        }
    }

    /// Sends one message, waiting up to `timeout` for room in the queue.
    pub fn send(
        &self,
        t: MessageType,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> Result<u16, Error> {
        match self {
            AnyClient::Std(c) => c.send(t, payload, timeout),
            AnyClient::Tokio(rt, c) => rt.block_on(c.send(t, payload, timeout)),
        }
    }

    /// Sends a message of a reserved type (`--system`).
    pub fn send_system(&self, t: MessageType, payload: Bytes) -> Result<u16, Error> {
        match self {
            AnyClient::Std(c) => c.send_system(t, payload),
            AnyClient::Tokio(_, c) => c.send_system(t, payload),
        }
    }

    /// A request and its reply.
    pub fn request(
        &self,
        t: MessageType,
        payload: Bytes,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error> {
        match self {
            AnyClient::Std(c) => c.request(t, payload, timeout),
            AnyClient::Tokio(rt, c) => rt.block_on(c.request(t, payload, timeout)),
        }
    }

    /// A PING's round trip.
    pub fn ping(&self, timeout: Option<Duration>) -> Result<Duration, Error> {
        match self {
            AnyClient::Std(c) => c.ping(timeout),
            AnyClient::Tokio(rt, c) => rt.block_on(c.ping(timeout)),
        }
    }

    /// Whether the connection is open.
    pub fn is_connected(&self) -> bool {
        match self {
            AnyClient::Std(c) => c.is_connected(),
            AnyClient::Tokio(_, c) => c.is_connected(),
        }
    }

    /// What TLS negotiated, over TLS.
    pub fn tls_info(&self) -> Option<TlsInfo> {
        match self {
            AnyClient::Std(c) => c.tls_info(),
            AnyClient::Tokio(_, c) => c.tls_info(),
        }
    }

    /// The server's address.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        match self {
            AnyClient::Std(c) => c.peer_addr(),
            AnyClient::Tokio(_, c) => c.peer_addr(),
        }
    }

    /// Closes after flushing (bounded by the flush deadline); whether a
    /// connection was open.
    pub fn disconnect(&self) -> bool {
        match self {
            AnyClient::Std(c) => c.disconnect(),
            AnyClient::Tokio(rt, c) => rt.block_on(c.disconnect()),
        }
    }
}
