//! How a [`Client`](super::Client) dials: the [`Connector`] trait and
//! [`TcpConnector`], the default.

use std::net::{SocketAddr, ToSocketAddrs};

use mio::net::TcpStream;
use veltix_proto::Error;

use crate::transport::Io;

/// How a [`Client`](crate::Client) opens its connections
/// ([`Client::with_connector`](crate::Client::with_connector)): TCP
/// ([`TcpConnector`], the default), a Unix socket, a stream handed over
/// already connected, any [`Io`] stream. TLS, when the client has it, runs
/// over the stream.
///
/// [`connect`](Self::connect) runs on the client's I/O thread for every
/// attempt (the first connect and each reconnect), with the config's
/// `server_addr` and `port`. It must not block for long: start a
/// non-blocking connect (as TCP does; the stream then reports writability
/// when it is done, see [`Io`]) or return a stream that is connected
/// already (a Unix socket, one end of a socketpair). The connect, the TLS
/// handshake and the Veltix handshake all run inside the config's
/// `handshake_timeout`.
///
/// ```
/// # #[cfg(unix)] {
/// use std::net::SocketAddr;
/// use std::path::PathBuf;
/// use veltix_std::{mio, Client, ClientConfig, Connector, Error};
///
/// /// Dials a Unix socket instead of `host:port`.
/// struct UnixConnector(PathBuf);
///
/// impl Connector for UnixConnector {
///     type Stream = mio::net::UnixStream;
///     fn connect(&self, _host: &str, _port: u16) -> Result<(Self::Stream, SocketAddr), Error> {
///         let stream = mio::net::UnixStream::connect(&self.0)?;
///         // No IP address: any placeholder (the client's `peer_addr()`).
///         Ok((stream, SocketAddr::from(([0, 0, 0, 0], 0))))
///     }
/// }
///
/// let path = std::env::temp_dir().join("veltix.sock");
/// let client = Client::with_connector(ClientConfig::new("localhost", 0), UnixConnector(path), None)?;
/// # }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait Connector: Send + Sync + 'static {
    /// The connections' stream type.
    type Stream: Io;

    /// Opens a connection to `host:port` (or wherever this connector
    /// leads): the stream, connected or connecting, and the peer's address
    /// (the client's [`peer_addr`](crate::Client::peer_addr) once it is
    /// up; streams without an IP address report any placeholder).
    ///
    /// # Errors
    /// The attempt's failure. An [`Error::Io`] is mapped as for TCP:
    /// `ConnectionRefused` becomes [`Error::Refused`], `TimedOut` and
    /// `WouldBlock` [`Error::TimedOut`] (see [`Error::from_connect`]).
    fn connect(&self, host: &str, port: u16) -> Result<(Self::Stream, SocketAddr), Error>;
}

/// The default [`Connector`]: resolves `host:port` (the first address),
/// then starts a non-blocking TCP connect to it. `TCP_NODELAY` is set once
/// the connection is up.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    type Stream = TcpStream;

    /// # Errors
    /// [`Error::Resolve`] when `host:port` resolves to nothing, [`Error::Io`]
    /// when the connect cannot start.
    fn connect(&self, host: &str, port: u16) -> Result<(TcpStream, SocketAddr), Error> {
        let name = format!("{host}:{port}");
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|_| Error::Resolve(name.clone()))?
            .next()
            .ok_or(Error::Resolve(name))?;
        Ok((TcpStream::connect(addr)?, addr))
    }
}

/// A [`Connector`] with its stream type erased, as the client holds it.
pub(super) trait AnyConnector: Send + Sync {
    fn connect_io(&self, host: &str, port: u16) -> Result<(Box<dyn Io>, SocketAddr), Error>;
}

impl<C: Connector> AnyConnector for C {
    fn connect_io(&self, host: &str, port: u16) -> Result<(Box<dyn Io>, SocketAddr), Error> {
        let (s, addr) = self.connect(host, port)?;
        Ok((Box::new(s), addr))
    }
}
