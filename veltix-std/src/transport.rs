//! The byte stream under one connection: plaintext TCP or TLS over TCP,
//! behind one small trait, so the I/O loops move plaintext and never
//! branch on TLS. No protocol rule lives here.
//!
//! TLS is a `rustls` connection driven by readiness over the non-blocking
//! socket: `read` pulls records (`read_tls`, `process_new_packets`) until
//! plaintext comes out or the socket is dry, `write_vectored` hands
//! plaintext to rustls and pushes records out (`write_tls`). TLS may need
//! to write while the core has nothing to send (the handshake, session
//! tickets, alerts): `wants_write` says so, and the loops then keep the
//! socket's write interest and call `flush` on writability. Plaintext that
//! rustls decrypted and the core has not taken yet stays in rustls: the
//! loops read a connection until `read` says `WouldBlock`, not until the
//! socket does.

use std::io::{self, ErrorKind, IoSlice, Read, Write};

use mio::net::TcpStream;
use veltix_tls::{TlsError, TlsInfo};

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
    /// The socket, for registration and addresses.
    fn socket(&mut self) -> &mut TcpStream;
    /// TLS: nothing came from the peer yet (no byte read, none waiting in
    /// the socket). Plaintext: never asked, `false`.
    fn silent(&mut self) -> bool {
        false
    }
}

impl Transport for TcpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Read::read(self, buf)
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Write::write_vectored(self, bufs)
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
    fn socket(&mut self) -> &mut TcpStream {
        self
    }
}

/// TLS over a non-blocking TCP socket.
pub(crate) struct TlsStream {
    sock: TcpStream,
    conn: rustls::Connection,
    /// The socket reached its end.
    eof: bool,
    /// Some bytes came from the peer.
    heard: bool,
    /// A TLS failure was reported once: later calls fail without touching rustls.
    failed: bool,
}

impl TlsStream {
    pub(crate) fn new(sock: TcpStream, conn: impl Into<rustls::Connection>) -> TlsStream {
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

    fn socket(&mut self) -> &mut TcpStream {
        &mut self.sock
    }

    fn silent(&mut self) -> bool {
        if self.heard || self.eof || self.failed {
            return false;
        }
        let mut one = [0u8; 1];
        matches!(self.sock.peek(&mut one), Err(e) if e.kind() == ErrorKind::WouldBlock)
    }
}

/// A connection's stream: plaintext or TLS.
pub(crate) enum Stream {
    Plain(TcpStream),
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
    fn socket(&mut self) -> &mut TcpStream {
        self.inner_mut().socket()
    }
    fn silent(&mut self) -> bool {
        self.inner_mut().silent()
    }
}
