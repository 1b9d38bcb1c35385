//! The byte stream under one connection: any [`Io`] stream (TCP, a Unix
//! socket, a socketpair end), plaintext or with TLS over it, behind one
//! small trait, so the I/O loops move plaintext and never branch on TLS or
//! on the kind of stream. No protocol rule lives here.
//!
//! TLS is a `rustls` connection driven by readiness over the non-blocking
//! stream: `read` pulls records (`read_tls`, `process_new_packets`) until
//! plaintext comes out or the stream is dry, `write_vectored` hands
//! plaintext to rustls and pushes records out (`write_tls`). TLS may need
//! to write while the core has nothing to send (the handshake, session
//! tickets, alerts): `wants_write` says so, and the loops then keep the
//! stream's write interest and call `flush` on writability. Plaintext that
//! rustls decrypted and the core has not taken yet stays in rustls: the
//! loops read a connection until `read` says `WouldBlock`, not until the
//! stream does.

use std::io::{self, ErrorKind, IoSlice, Read, Write};
use std::net::SocketAddr;

use mio::net::TcpStream;
use veltix_tls::{TlsError, TlsInfo};

/// A byte stream a connection runs over: TCP ([`mio::net::TcpStream`]), a
/// Unix socket ([`mio::net::UnixStream`], on Unix), or any other
/// non-blocking stream a [`mio::Poll`] can watch. TLS, when the client or
/// server has it, runs over the stream: it is one layer, not another driver.
///
/// What the driver expects of a stream:
///
/// * **Non-blocking.** `read`, `write` and `write_vectored` return
///   [`WouldBlock`](std::io::ErrorKind::WouldBlock) instead of waiting. The
///   driver registers the stream ([`mio::event::Source`]) for readable and
///   writable events (edge-triggered) and reads or writes until
///   `WouldBlock` before it waits for the next event. `Ok(0)` from `read`
///   is the end of the stream. `write_vectored` should take several buffers
///   in one call (the driver hands it up to 64).
/// * **A connect still in progress** (a stream from a
///   [`Connector`](crate::Connector)) reports writability once it is done;
///   then [`take_error`](Self::take_error) gives its failure, and
///   [`is_connected`](Self::is_connected) whether it is up. A stream that
///   is connected from the start keeps both defaults.
///
/// The provided methods fit a stream that is connected from the start and
/// has no IP address; [`mio::net::TcpStream`] and [`mio::net::UnixStream`]
/// implement them all. Wrap your own type (an already connected socket, a
/// socketpair end) in one of those with `from_std` after making it
/// non-blocking, or implement the trait for it.
///
/// ```
/// use std::io;
/// use veltix_std::{mio, Io};
///
/// // A stream type of your own: forward to the mio stream inside.
/// struct Traced(mio::net::TcpStream);
///
/// impl io::Read for Traced {
///     fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
///         self.0.read(buf)
///     }
/// }
/// impl io::Write for Traced {
///     fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
///         self.0.write(buf)
///     }
///     fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
///         self.0.write_vectored(bufs)
///     }
///     fn flush(&mut self) -> io::Result<()> {
///         self.0.flush()
///     }
/// }
/// impl mio::event::Source for Traced {
///     fn register(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
///         self.0.register(r, t, i)
///     }
///     fn reregister(&mut self, r: &mio::Registry, t: mio::Token, i: mio::Interest) -> io::Result<()> {
///         self.0.reregister(r, t, i)
///     }
///     fn deregister(&mut self, r: &mio::Registry) -> io::Result<()> {
///         self.0.deregister(r)
///     }
/// }
/// impl Io for Traced {
///     fn take_error(&self) -> io::Result<Option<io::Error>> {
///         self.0.take_error()
///     }
///     fn is_connected(&self) -> io::Result<bool> {
///         Io::is_connected(&self.0)
///     }
/// }
/// ```
pub trait Io: Read + Write + mio::event::Source + Send + 'static {
    /// The failure of a non-blocking connect (`SO_ERROR`), taken once it
    /// reported writability: `Ok(None)` when there is none (the default).
    ///
    /// # Errors
    /// When the stream cannot tell; the connect counts as failed with it.
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        Ok(None)
    }

    /// Whether the stream is connected, asked after writability and
    /// [`take_error`](Self::take_error): `Ok(false)` when a non-blocking
    /// connect is still in progress (the event was spurious; the driver
    /// waits for the next one). Default `Ok(true)`.
    ///
    /// # Errors
    /// The connect failed.
    fn is_connected(&self) -> io::Result<bool> {
        Ok(true)
    }

    /// This side's address, if the stream has an IP one (the client's
    /// [`local_addr`](crate::Client::local_addr)). Default `None`.
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }

    /// Sends small writes at once (`TCP_NODELAY`); called with `true` once
    /// a connection is up, and its failure ignored. Default: nothing to do.
    ///
    /// # Errors
    /// As the stream reports.
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        let _ = nodelay;
        Ok(())
    }

    /// Whether something waits to be read (bytes, the end of the stream, an
    /// error), found without taking it (`MSG_PEEK`): `Some(false)` when a
    /// read would block now. `None` (the default) when the stream cannot
    /// tell; the driver then goes by readiness events. A TLS server asks it
    /// of a connection that has sent nothing for a while, to answer a
    /// plaintext Veltix client with `tls_required`.
    fn has_input(&self) -> Option<bool> {
        None
    }
}

/// A stream whose type is picked at run time: a [`Connector`](crate::Connector)
/// or [`Listener`](crate::Listener) that hands out TCP or Unix sockets by
/// configuration can name `Box<dyn Io>` as its stream.
impl Io for Box<dyn Io> {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        (**self).take_error()
    }
    fn is_connected(&self) -> io::Result<bool> {
        (**self).is_connected()
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        (**self).local_addr()
    }
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        (**self).set_nodelay(nodelay)
    }
    fn has_input(&self) -> Option<bool> {
        (**self).has_input()
    }
}

/// `Ok(true)` when `peer_addr` answered, `Ok(false)` for `NotConnected`
/// (a connect in progress), the error otherwise.
fn connected<A>(peer_addr: io::Result<A>) -> io::Result<bool> {
    match peer_addr {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}

/// TCP: `TCP_NODELAY`, addresses, and a one-byte peek for [`Io::has_input`].
impl Io for TcpStream {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        TcpStream::take_error(self)
    }
    fn is_connected(&self) -> io::Result<bool> {
        connected(self.peer_addr())
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        TcpStream::local_addr(self).ok()
    }
    fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        TcpStream::set_nodelay(self, nodelay)
    }
    fn has_input(&self) -> Option<bool> {
        let mut one = [0u8; 1];
        Some(!matches!(self.peek(&mut one), Err(e) if e.kind() == ErrorKind::WouldBlock))
    }
}

/// A Unix socket: no IP address ([`Io::local_addr`] is `None`), no
/// `TCP_NODELAY`; [`Io::has_input`] peeks one byte.
#[cfg(unix)]
impl Io for mio::net::UnixStream {
    fn take_error(&self) -> io::Result<Option<io::Error>> {
        mio::net::UnixStream::take_error(self)
    }
    fn is_connected(&self) -> io::Result<bool> {
        connected(self.peer_addr())
    }
    fn has_input(&self) -> Option<bool> {
        let mut one = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let peeked = socket2::SockRef::from(self).peek(&mut one);
        Some(!matches!(peeked, Err(e) if e.kind() == ErrorKind::WouldBlock))
    }
}

/// A connection's byte stream as the I/O loops use it (non-blocking).
pub(crate) trait Transport {
    /// Reads plaintext: `Ok(0)` at the end of the stream, `WouldBlock`
    /// when nothing is buffered and the socket is dry.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Takes plaintext (`bufs` not empty): how much was taken, or
    /// `WouldBlock` when nothing could be (socket and buffers full, or a
    /// TLS handshake still running).
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
    /// Pushes out what the transport holds of its own (TLS records) until
    /// it is all out or the socket is full.
    fn flush(&mut self) -> io::Result<()>;
    /// Whether it holds bytes of its own to write (see [`flush`](Self::flush)).
    fn wants_write(&self) -> bool;
    /// Whether output waiting in the driver can be taken now: `false` while
    /// a TLS handshake runs (progress then comes from reading).
    fn takes_output(&self) -> bool;
    /// Ends the stream politely, best effort and without blocking (TLS:
    /// `close_notify`).
    fn close(&mut self);
    /// The negotiated TLS parameters, once a TLS handshake finished.
    fn tls_info(&self) -> Option<TlsInfo>;
    /// The stream under any TLS: registration, addresses, raw writes.
    fn io(&mut self) -> &mut dyn Io;
    /// TLS: nothing came from the peer yet (no byte read, none waiting in
    /// the stream; `unread`: the loop has a readiness event not read yet,
    /// asked when the stream cannot peek). Plaintext: never asked, `false`.
    fn silent(&mut self, unread: bool) -> bool {
        let _ = unread;
        false
    }
}

impl Transport for Box<dyn Io> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(&mut **self, buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Write::write_vectored(&mut **self, bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn wants_write(&self) -> bool {
        false
    }
    fn takes_output(&self) -> bool {
        true
    }
    fn close(&mut self) {}
    fn tls_info(&self) -> Option<TlsInfo> {
        None
    }
    fn io(&mut self) -> &mut dyn Io {
        &mut **self
    }
}

/// TLS over a non-blocking stream.
pub(crate) struct TlsStream {
    sock: Box<dyn Io>,
    conn: rustls::Connection,
    /// The socket reached its end.
    eof: bool,
    /// Some bytes came from the peer.
    heard: bool,
    /// A TLS failure was reported once: later calls fail without touching rustls.
    failed: bool,
}

impl TlsStream {
    pub(crate) fn new(sock: Box<dyn Io>, conn: impl Into<rustls::Connection>) -> TlsStream {
        TlsStream {
            sock,
            conn: conn.into(),
            eof: false,
            heard: false,
            failed: false,
        }
    }

    fn fail(&mut self, e: TlsError) -> io::Error {
        self.failed = true;
        e.into_io()
    }

    /// Feeds rustls from the socket once; `Ok(false)` when the socket is dry.
    fn pull(&mut self) -> io::Result<bool> {
        match self.conn.read_tls(&mut self.sock) {
            Ok(0) => {
                self.eof = true;
                if self.conn.is_handshaking() {
                    return Err(self.fail(TlsError::HandshakeEof));
                }
            }
            Ok(_) => self.heard = true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == ErrorKind::Interrupted => return Ok(true),
            Err(e) => return Err(e),
        }
        let handshaking = self.conn.is_handshaking();
        if let Err(e) = self.conn.process_new_packets() {
            // rustls queued an alert for the peer: try to send it.
            let _ = self.flush();
            return Err(self.fail(TlsError::from_rustls(e, handshaking)));
        }
        // Handshake messages, tickets, key updates: out at once if the socket takes them.
        self.flush()?;
        Ok(true)
    }
}

impl Transport for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failed {
            return Err(ErrorKind::InvalidData.into());
        }
        let mut filled = 0;
        while filled < buf.len() {
            match self.conn.reader().read(&mut buf[filled..]) {
                // `close_notify` received: the end, after what was read.
                Ok(0) => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                // TCP EOF without `close_notify`: an ordinary end (the core
                // reports a frame cut in the middle).
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(filled),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(filled);
            }
            match self.pull() {
                Ok(true) => {}
                Ok(false) if filled > 0 => return Ok(filled),
                Ok(false) => return Err(ErrorKind::WouldBlock.into()),
                Err(e) if filled > 0 && e.kind() == ErrorKind::WouldBlock => return Ok(filled),
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.failed {
            return Err(ErrorKind::InvalidData.into());
        }
        self.flush()?;
        let n = self.conn.writer().write_vectored(bufs)?;
        if n == 0 {
            // rustls's buffers are full (or hold the limit before the
            // handshake ends): wait for the socket or for the handshake.
            return Err(ErrorKind::WouldBlock.into());
        }
        self.flush()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn wants_write(&self) -> bool {
        !self.failed && self.conn.wants_write()
    }

    fn takes_output(&self) -> bool {
        !self.conn.is_handshaking()
    }

    fn close(&mut self) {
        if !self.failed && !self.conn.is_handshaking() {
            self.conn.send_close_notify();
            let _ = self.flush();
        }
    }

    fn tls_info(&self) -> Option<TlsInfo> {
        TlsInfo::of(&self.conn)
    }

    fn io(&mut self) -> &mut dyn Io {
        &mut *self.sock
    }

    fn silent(&mut self, unread: bool) -> bool {
        if self.heard || self.eof || self.failed {
            return false;
        }
        match self.sock.has_input() {
            Some(input) => !input,
            None => !unread,
        }
    }
}

/// A connection's stream: plaintext or TLS.
pub(crate) enum Stream {
    Plain(Box<dyn Io>),
    Tls(Box<TlsStream>),
}

impl Stream {
    fn inner(&self) -> &dyn Transport {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &**s,
        }
    }
    fn inner_mut(&mut self) -> &mut dyn Transport {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &mut **s,
        }
    }
}

impl Transport for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner_mut().read(buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        self.inner_mut().write_vectored(bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner_mut().flush()
    }
    fn wants_write(&self) -> bool {
        self.inner().wants_write()
    }
    fn takes_output(&self) -> bool {
        self.inner().takes_output()
    }
    fn close(&mut self) {
        self.inner_mut().close();
    }
    fn tls_info(&self) -> Option<TlsInfo> {
        self.inner().tls_info()
    }
    fn io(&mut self) -> &mut dyn Io {
        self.inner_mut().io()
    }
    fn silent(&mut self, unread: bool) -> bool {
        self.inner_mut().silent(unread)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};

    use super::Io;

    /// Polls `f` every millisecond until it is `Some`, for at most 5 s.
    fn soon<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(v) = f() {
                return v;
            }
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn tcp_reports_its_connect_addresses_and_waiting_input() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let s = mio::net::TcpStream::connect(addr).unwrap();
        let (mut theirs, _) = listener.accept().unwrap();
        soon("the connect", || {
            Io::is_connected(&s).unwrap().then_some(())
        });
        assert!(Io::take_error(&s).unwrap().is_none());
        assert_eq!(Io::local_addr(&s).map(|a| a.ip()), Some(addr.ip()));
        Io::set_nodelay(&s, true).unwrap();
        assert!(s.nodelay().unwrap());
        assert_eq!(s.has_input(), Some(false));
        theirs.write_all(b"x").unwrap();
        soon("the byte", || s.has_input().filter(|&b| b));
    }

    #[test]
    fn a_refused_tcp_connect_is_an_error() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let s = mio::net::TcpStream::connect(addr).unwrap();
        let e = soon("the failure", || match Io::take_error(&s) {
            Ok(Some(e)) => Some(e),
            Ok(None) => match Io::is_connected(&s) {
                Ok(false) => None,
                Ok(true) => panic!("connected to a closed port"),
                Err(e) => Some(e),
            },
            Err(e) => Some(e),
        });
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[cfg(unix)]
    #[test]
    fn a_unix_socket_peeks_without_taking() {
        let (mut ours, mut theirs) = mio::net::UnixStream::pair().unwrap();
        assert!(Io::is_connected(&ours).unwrap());
        assert!(Io::take_error(&ours).unwrap().is_none());
        assert_eq!(Io::local_addr(&ours), None);
        assert_eq!(ours.has_input(), Some(false));
        theirs.write_all(b"x").unwrap();
        assert_eq!(ours.has_input(), Some(true));
        let mut one = [0u8; 1];
        assert_eq!(ours.read(&mut one).unwrap(), 1, "the peek took nothing");
        assert_eq!(&one, b"x");
        assert_eq!(ours.has_input(), Some(false));
        drop(theirs);
        assert_eq!(ours.has_input(), Some(true), "the end of the stream waits");
        let boxed: Box<dyn Io> = Box::new(ours);
        assert_eq!(boxed.has_input(), Some(true));
        assert!(boxed.is_connected().unwrap());
    }
}
