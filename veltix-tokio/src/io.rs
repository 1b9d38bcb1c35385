//! Stream helpers shared by the client and server tasks: reads into a
//! reused buffer and writes of what the core gave, polled on any
//! `AsyncRead + AsyncWrite` stream (TCP, TLS over TCP, a Unix socket, an
//! in-memory duplex), so TLS is one more stream type and not a fork.

use std::future::Future;
use std::io::ErrorKind;
use std::pin::{pin, Pin};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

/// A byte stream a connection can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

/// Most bytes read (and fed to the core under its lock) at once.
pub(crate) const READ_MAX: usize = 64 * 1024;
/// Most bytes written in one turn of a task's loop before it looks at its
/// other work (input, timers) again.
pub(crate) const WRITE_TURN: usize = 1024 * 1024;

/// What one read gave.
pub(crate) enum Read {
    /// Bytes are in [`ReadBuf::data`].
    Data,
    /// The peer closed its side (for TLS: with or without `close_notify`;
    /// the core reports a frame cut in the middle).
    Eof,
    /// The stream failed.
    Failed(std::io::Error),
}

/// Capacity of the read buffer between bursts: enough for small messages,
/// small enough for idle connections.
const SMALL: usize = 4 * 1024;

/// A read buffer reused from read to read: [`SMALL`] bytes, grown to
/// [`READ_MAX`] while reads fill it, shrunk back when the stream runs dry.
/// Reads go to spare capacity: nothing is zeroed.
#[derive(Default)]
pub(crate) struct ReadBuf(Vec<u8>);

impl ReadBuf {
    /// Polls one read (`Pending`: nothing to read now; the buffer shrinks).
    pub(crate) fn poll_read<S: AsyncRead + Unpin>(
        &mut self,
        s: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<Read> {
        let want = if self.0.capacity() > SMALL && !self.0.is_empty() {
            READ_MAX
        } else if self.0.len() == self.0.capacity() && !self.0.is_empty() {
            // The last read filled the buffer: more is coming.
            READ_MAX
        } else {
            self.0.capacity().max(SMALL)
        };
        self.0.clear();
        self.0.reserve_exact(want);
        // `read_buf` fills spare capacity safely; the future holds no state
        // across polls, so making one per poll is free.
        let r = pin!(s.read_buf(&mut self.0)).poll(cx);
        match r {
            Poll::Ready(Ok(0)) => Poll::Ready(Read::Eof),
            Poll::Ready(Ok(_)) => Poll::Ready(Read::Data),
            // TLS: the peer closed without `close_notify`.
            Poll::Ready(Err(e)) if e.kind() == ErrorKind::UnexpectedEof => Poll::Ready(Read::Eof),
            Poll::Ready(Err(e)) => Poll::Ready(Read::Failed(crate::tls_io::classify(e, false))),
            Poll::Pending => {
                if self.0.capacity() > SMALL {
                    self.0 = Vec::with_capacity(SMALL);
                }
                Poll::Pending
            }
        }
    }

    pub(crate) fn data(&self) -> &[u8] {
        &self.0
    }
}

/// Polls one write of `out` (advanced by what was taken; `Ok(n)`, n > 0).
pub(crate) fn poll_write<S: AsyncWrite + Unpin>(
    s: &mut S,
    out: &mut Bytes,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    loop {
        return match Pin::new(&mut *s).poll_write(cx, out) {
            Poll::Ready(Ok(0)) => Poll::Ready(Err(ErrorKind::WriteZero.into())),
            Poll::Ready(Ok(n)) => {
                out.advance(n);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) if e.kind() == ErrorKind::Interrupted => continue,
            Poll::Ready(Err(e)) => Poll::Ready(Err(crate::tls_io::classify(e, false))),
            Poll::Pending => Poll::Pending,
        };
    }
}

/// Writes `out` while the stream takes it at once, up to [`WRITE_TURN`]
/// bytes; `refill` reports each write to the core and refills `out` when
/// it is empty. The number of bytes written, or the stream's error.
pub(crate) async fn write_now<S: AsyncWrite + Unpin>(
    s: &mut S,
    out: &mut Bytes,
    mut refill: impl FnMut(usize, &mut Bytes),
) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut turn = 0;
        while !out.is_empty() && turn < WRITE_TURN {
            match poll_write(s, out, cx) {
                Poll::Ready(Ok(n)) => {
                    turn += n;
                    refill(n, out);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        Poll::Ready(Ok(turn))
    })
    .await
}

/// Polls `f` once, without a task to wake (best-effort work at the end of
/// a stream, such as sending TLS `close_notify`).
pub(crate) fn poll_once<T>(f: impl FnOnce(&mut Context<'_>) -> Poll<T>) -> Option<T> {
    match f(&mut Context::from_waker(std::task::Waker::noop())) {
        Poll::Ready(t) => Some(t),
        Poll::Pending => None,
    }
}

/// What a connection's stream became ready for (see [`ready`]).
pub(crate) enum Ready {
    /// A read finished (the buffer holds its data).
    Read(Read),
    /// This much of the output was written.
    Wrote(usize),
    /// Flushing failed.
    Failed(std::io::Error),
}

/// Waits until the stream can be read (if `read`), written (if `writing`),
/// and pushes out what it buffers of its own (TLS records) while
/// `*flush` is set (cleared once done). One future over the one stream, so
/// reads, writes and flushes need no split.
pub(crate) async fn ready<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    buf: &mut ReadBuf,
    read: bool,
    writing: Option<&mut Bytes>,
    flush: &mut bool,
) -> Ready {
    let mut writing = writing;
    std::future::poll_fn(|cx| {
        if *flush {
            match Pin::new(&mut *s).poll_flush(cx) {
                Poll::Ready(Ok(())) => *flush = false,
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Ready::Failed(crate::tls_io::classify(e, false)))
                }
                Poll::Pending => {}
            }
        }
        if let Some(out) = writing.as_deref_mut() {
            match Pin::new(&mut *s).poll_write(cx, out) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Ready::Failed(ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => {
                    out.advance(n);
                    return Poll::Ready(Ready::Wrote(n));
                }
                Poll::Ready(Err(e)) if e.kind() == ErrorKind::Interrupted => {
                    cx.waker().wake_by_ref();
                }
                Poll::Ready(Err(e)) => {
                    return Poll::Ready(Ready::Failed(crate::tls_io::classify(e, false)))
                }
                Poll::Pending => {}
            }
        }
        if read {
            if let Poll::Ready(r) = buf.poll_read(s, cx) {
                return Poll::Ready(Ready::Read(r));
            }
        }
        Poll::Pending
    })
    .await
}

/// "Never", for a disarmed [`Timer`].
const FAR: std::time::Duration = std::time::Duration::from_secs(86_400 * 365);

/// One task's deadline timer, kept across loop turns and re-armed only when
/// the core's deadline changes (registering a fresh timer every turn costs
/// a timer-wheel update, and may wake a parked worker).
pub(crate) struct Timer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    armed: Option<std::time::Instant>,
}

impl Timer {
    pub(crate) fn new() -> Self {
        Timer {
            sleep: Box::pin(tokio::time::sleep(std::time::Duration::from_secs(
                86_400 * 365,
            ))),
            armed: None,
        }
    }

    /// Arms the timer for `deadline` (`None`: disarmed).
    pub(crate) fn set(&mut self, deadline: Option<std::time::Instant>) {
        if deadline != self.armed {
            let at = match deadline {
                Some(d) => crate::instant(d),
                // Disarmed: move it out of the way (a paused clock
                // advances to the earliest registered timer).
                None => tokio::time::Instant::now() + FAR,
            };
            self.sleep.as_mut().reset(at);
            self.armed = deadline;
        }
    }

    pub(crate) fn is_armed(&self) -> bool {
        self.armed.is_some()
    }

    /// Completes at the armed deadline (then disarms).
    pub(crate) async fn fired(&mut self) {
        self.sleep.as_mut().await;
        self.armed = None;
    }
}
