//! Socket plumbing shared by the client's and the server's I/O threads:
//! vectored writes of the core's output, bounded reads, interest
//! bookkeeping. No protocol rule lives here.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};

use bytes::{Buf, Bytes};
use mio::event::Source;
use mio::{Interest, Registry, Token};

use crate::transport::Transport;

/// Smallest read buffer (`buffer_size` when larger).
pub(crate) const READ_CHUNK: usize = 64 * 1024;

/// Reads per socket per pass of the I/O loop (fairness between sockets):
/// at most 256 KiB of one socket before every other ready socket's turn, so
/// 200 peers uploading large frames keep a small request waiting for
/// 50 MiB of copies at most, not 200 MiB.
pub(crate) const READS_PER_PASS: usize = 4;

/// Chunks given to one `write_vectored` call.
const IOV_MAX: usize = 64;

/// The core's side of one transport's output. Implementations lock the
/// core for the call only: the socket is written without the lock.
pub(crate) trait Output {
    /// Reports `written` bytes (when non-zero) and moves the core's next
    /// output into `pending`, under one lock.
    fn exchange(&mut self, written: usize, pending: &mut VecDeque<Bytes>);
}

/// What a flush ended with.
#[derive(Debug)]
pub(crate) enum Flushed {
    /// Everything the core gave was written.
    Done,
    /// The socket is full: wait for writability.
    Blocked,
    /// The socket failed.
    Failed(std::io::Error),
}

/// Writes the core's output with vectored writes until it is all written
/// or the socket blocks. `pending` holds bytes taken from the core and not
/// yet written (bounded by the core's transmit window). Returns the outcome
/// and the number of bytes written. Call it without holding the core's lock.
pub(crate) fn flush(
    sock: &mut impl Transport,
    pending: &mut VecDeque<Bytes>,
    out: &mut impl Output,
) -> (Flushed, usize) {
    let mut total = 0;
    out.exchange(0, pending);
    loop {
        if pending.is_empty() {
            // What the transport holds of its own (TLS records) goes too.
            return match sock.flush() {
                Ok(()) if sock.wants_write() => (Flushed::Blocked, total),
                Ok(()) => (Flushed::Done, total),
                Err(e) => (Flushed::Failed(e), total),
            };
        }
        let r = {
            let mut iov = [IoSlice::new(&[]); IOV_MAX];
            let mut n = 0;
            for (slot, b) in iov.iter_mut().zip(pending.iter()) {
                *slot = IoSlice::new(b);
                n += 1;
            }
            sock.write_vectored(&iov[..n])
        };
        match r {
            Ok(0) => return (Flushed::Failed(ErrorKind::WriteZero.into()), total),
            Ok(n) => {
                total += n;
                let mut left = n;
                while left > 0 {
                    let front = pending.front_mut().expect("wrote no more than pending");
                    if front.len() <= left {
                        left -= front.len();
                        pending.pop_front();
                    } else {
                        front.advance(left);
                        left = 0;
                    }
                }
                out.exchange(n, pending);
            }
            // `pending` holds everything the core had (the last exchange
            // took it), so the core's `poll_timeout` is not "now" while we
            // wait for writability.
            Err(e) if e.kind() == ErrorKind::WouldBlock => return (Flushed::Blocked, total),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (Flushed::Failed(e), total),
        }
    }
}

/// One read's result.
#[derive(Debug)]
pub(crate) enum Read1 {
    Data(usize),
    Eof,
    Blocked,
    Failed(std::io::Error),
}

/// One non-blocking read into `buf`.
pub(crate) fn read1(sock: &mut impl Transport, buf: &mut [u8]) -> Read1 {
    loop {
        match sock.read(buf) {
            Ok(0) => return Read1::Eof,
            Ok(n) => return Read1::Data(n),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Read1::Blocked,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Read1::Failed(e),
        }
    }
}

/// Registers, re-registers or deregisters `sock` so that its interest is
/// `want` (`None`: no interest at all). `current` tracks what is registered.
pub(crate) fn set_interest<S: Source + ?Sized>(
    registry: &Registry,
    sock: &mut S,
    token: Token,
    current: &mut Option<Interest>,
    want: Option<Interest>,
) {
    if *current == want {
        return;
    }
    let r = match (*current, want) {
        (None, Some(i)) => registry.register(sock, token, i),
        (Some(_), Some(i)) => registry.reregister(sock, token, i),
        (Some(_), None) => registry.deregister(sock),
        (None, None) => Ok(()),
    };
    match r {
        Ok(()) => *current = want,
        Err(e) => tracing::warn!(error = %e, "cannot change a socket's registration"),
    }
}

/// Whether a connection needs writability: the transport holds bytes of
/// its own (TLS records), or the driver holds output the transport can
/// take now (not while a TLS handshake runs: reads move it on).
pub(crate) fn wants_writable(sock: &impl Transport, pending: bool) -> bool {
    sock.wants_write() || (pending && sock.takes_output())
}

/// The interest a socket needs: readable while the core wants input (and
/// the driver can take it), writable while bytes wait to be written.
pub(crate) fn interest(read: bool, write: bool) -> Option<Interest> {
    match (read, write) {
        (true, true) => Some(Interest::READABLE | Interest::WRITABLE),
        (true, false) => Some(Interest::READABLE),
        (false, true) => Some(Interest::WRITABLE),
        (false, false) => None,
    }
}
