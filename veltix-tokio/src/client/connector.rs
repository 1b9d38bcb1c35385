//! Where a client's connections come from: the [`Connector`] trait, TCP's
//! [`TcpConnector`], and the type-erased form the client task keeps.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use veltix_proto::{Error, Wait};

use crate::io::Io;

/// Where a [`Client`](crate::Client) gets its connections from
/// ([`Client::with_connector`](crate::Client::with_connector)): TCP by
/// default ([`TcpConnector`]), or any other byte stream (a Unix socket, an
/// in-memory pipe, a simulated network such as turmoil's).
///
/// The client calls [`connect`](Self::connect) for every attempt (first
/// connect and each reconnect) with the config's `server_addr` and `port`,
/// and drops the future when the attempt is abandoned (the handshake
/// deadline, which covers dialling, passed, or the client disconnected).
/// TLS, when configured, runs over the stream it returns.
///
/// ```
/// use std::net::SocketAddr;
/// use veltix_tokio::{Connector, Error};
///
/// /// Dials a Unix socket, whatever host and port the config names.
/// # #[cfg(unix)]
/// struct UnixConnector(std::path::PathBuf);
///
/// # #[cfg(unix)]
/// impl Connector for UnixConnector {
///     type Stream = tokio::net::UnixStream;
///     async fn connect(&self, _host: &str, _port: u16)
///         -> Result<(Self::Stream, SocketAddr), Error>
///     {
///         let s = tokio::net::UnixStream::connect(&self.0).await?;
///         // A Unix socket has no IP address: any placeholder will do.
///         Ok((s, SocketAddr::from(([127, 0, 0, 1], 0))))
///     }
/// }
/// ```
pub trait Connector: Send + Sync + 'static {
    /// The connections' stream type.
    type Stream: Io;

    /// A new connection to `host:port` and the address it reached (what
    /// [`Client::peer_addr`](crate::Client::peer_addr) reports).
    ///
    /// # Errors
    /// The attempt's failure, as the client reports it to `connect()` and
    /// `on_disconnect`: [`Error::Refused`], [`Error::Resolve`],
    /// [`Error::Io`] (any `std::io::Error` converts), ...
    fn connect(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<(Self::Stream, SocketAddr), Error>> + Send;

    /// The local address of a stream this connector made (what
    /// [`Client::local_addr`](crate::Client::local_addr) reports);
    /// `None` by default.
    fn local_addr(stream: &Self::Stream) -> Option<SocketAddr> {
        let _ = stream;
        None
    }
}

/// TCP: resolves the host, tries its addresses in turn, sets `TCP_NODELAY`.
/// What [`Client::new`](crate::Client::new) uses.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpConnector;

impl Connector for TcpConnector {
    type Stream = TcpStream;

    async fn connect(&self, host: &str, port: u16) -> Result<(TcpStream, SocketAddr), Error> {
        let name = format!("{host}:{port}");
        let addrs = tokio::net::lookup_host((host, port))
            .await
            .map_err(|_| Error::Resolve(name.clone()))?;
        let mut last = Error::Resolve(name);
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    s.set_nodelay(true)?;
                    return Ok((s, addr));
                }
                // The deadline is the session's (the future is dropped at
                // it); an OS timeout before it is reported with the
                // client's deadline (see `Dial::dial`).
                Err(e) => last = Error::from_connect(e, addr, Duration::ZERO),
            }
        }
        Err(last)
    }

    fn local_addr(stream: &TcpStream) -> Option<SocketAddr> {
        stream.local_addr().ok()
    }
}

/// What a dial gave: the stream, the peer's and the local address.
pub(super) type Dialed = (Box<dyn Io>, SocketAddr, Option<SocketAddr>);
/// A dial in progress.
pub(super) type DialFut = Pin<Box<dyn Future<Output = Result<Dialed, Error>> + Send>>;

/// A [`Connector`] with its stream type erased, as the client keeps it.
pub(super) trait Dial: Send + Sync + 'static {
    /// Dials `host:port`; a connect timeout is reported as `timeout`
    /// (the client's deadline for an attempt).
    fn dial(self: Arc<Self>, host: String, port: u16, timeout: Duration) -> DialFut;
}

impl<C: Connector> Dial for C {
    fn dial(self: Arc<Self>, host: String, port: u16, timeout: Duration) -> DialFut {
        Box::pin(async move {
            match self.connect(&host, port).await {
                Ok((s, peer)) => {
                    let local = C::local_addr(&s);
                    Ok((Box::new(s) as Box<dyn Io>, peer, local))
                }
                Err(Error::TimedOut {
                    what: Wait::Connect,
                    ..
                }) => Err(Error::TimedOut {
                    what: Wait::Connect,
                    after: timeout,
                }),
                Err(e) => Err(e),
            }
        })
    }
}
