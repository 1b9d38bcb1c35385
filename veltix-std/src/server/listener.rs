//! Where a [`Server`](super::Server) gets its connections from: the
//! [`Listener`] trait, its TCP and Unix-socket implementations, and the
//! TCP bind of [`Server::start`](super::Server::start).

use std::io;
use std::net::{SocketAddr, ToSocketAddrs};

use mio::net::TcpListener;
use veltix_proto::{Error, ServerConfig};

use crate::transport::Io;

/// Where a [`Server`](crate::Server) gets its connections from
/// ([`Server::start_on`](crate::Server::start_on)): a TCP listener, a Unix
/// socket listener, or any other non-blocking source of [`Io`] streams that
/// a [`mio::Poll`] can watch.
///
/// The server's I/O thread registers the listener for readable events
/// (edge-triggered) and calls [`accept`](Self::accept) until it returns
/// `WouldBlock` (at most 128 times per turn of its loop, so established
/// connections keep being served under a flood of new ones). Errors other
/// than `WouldBlock`, `Interrupted`, `ConnectionAborted` and
/// `ConnectionReset` (file descriptors ran out, ...) are logged and the
/// listener rests 75 ms before the next `accept`. Dropped when the server
/// shuts down (a Unix socket's file stays: remove it yourself).
pub trait Listener: mio::event::Source + Send + 'static {
    /// The connections' stream type.
    type Stream: Io;

    /// The next waiting connection and its peer's address, without
    /// blocking: `WouldBlock` when none is waiting. Streams without an IP
    /// address report a placeholder of the listener's choosing.
    ///
    /// # Errors
    /// `WouldBlock`, or as the listener reports.
    fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)>;

    /// The address listened on (the server's
    /// [`local_addr`](crate::Server::local_addr)).
    ///
    /// # Errors
    /// As the listener reports; [`Server::start_on`](crate::Server::start_on)
    /// then fails with it.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

impl Listener for TcpListener {
    type Stream = mio::net::TcpStream;
    fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        TcpListener::accept(self)
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        TcpListener::local_addr(self)
    }
}

/// The address a Unix-socket [`Listener`] reports for itself and for every
/// peer: `0.0.0.0:0`, the unspecified IPv4 address (Unix sockets have no IP
/// address).
#[cfg(unix)]
const UNIX_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// A Unix socket listener. Unix sockets have no IP address: the listener
/// and every peer report `0.0.0.0:0` (the unspecified IPv4 address, port
/// 0) as theirs.
#[cfg(unix)]
impl Listener for mio::net::UnixListener {
    type Stream = mio::net::UnixStream;
    fn accept(&mut self) -> io::Result<(Self::Stream, SocketAddr)> {
        let (s, _) = mio::net::UnixListener::accept(self)?;
        Ok((s, UNIX_ADDR))
    }
    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(UNIX_ADDR)
    }
}

/// A [`Listener`] with its stream type erased, as the I/O loop holds it.
pub(super) trait AnyListener: mio::event::Source + Send {
    fn accept_io(&mut self) -> io::Result<(Box<dyn Io>, SocketAddr)>;
    fn listen_addr(&self) -> io::Result<SocketAddr>;
}

impl<L: Listener> AnyListener for L {
    fn accept_io(&mut self) -> io::Result<(Box<dyn Io>, SocketAddr)> {
        let (s, addr) = self.accept()?;
        Ok((Box::new(s), addr))
    }
    fn listen_addr(&self) -> io::Result<SocketAddr> {
        self.local_addr()
    }
}

/// Binds the config's `host:port` (the first address that binds), backlog
/// 4096, non-blocking.
pub(super) fn bind(config: &ServerConfig) -> Result<TcpListener, Error> {
    use socket2::{Domain, Protocol, Socket, Type};
    let name = format!("{}:{}", config.host, config.port);
    let addrs: Vec<SocketAddr> = (config.host.as_str(), config.port)
        .to_socket_addrs()
        .map_err(|_| Error::Resolve(name.clone()))?
        .collect();
    let mut last = None;
    for addr in addrs {
        let r = (|| -> std::io::Result<TcpListener> {
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            #[cfg(unix)]
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(4096)?;
            s.set_nonblocking(true)?;
            Ok(TcpListener::from_std(s.into()))
        })();
        match r {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or(Error::Resolve(name), Error::Io))
}
