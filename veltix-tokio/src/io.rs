//! Socket helpers shared by the client and server tasks: non-blocking reads
//! into a reused buffer, non-blocking writes of what the core gave.

use std::io::ErrorKind;

use bytes::{Buf, Bytes};
use tokio::net::TcpStream;

/// Most bytes read (and fed to the core under its lock) at once.
pub(crate) const READ_MAX: usize = 64 * 1024;
/// Most bytes written in one turn of a task's loop before it looks at its
/// other work (input, timers) again.
pub(crate) const WRITE_TURN: usize = 1024 * 1024;

/// What one non-blocking read gave.
pub(crate) enum Read {
    /// Bytes are in [`ReadBuf::data`].
    Data,
    /// The peer closed its side.
    Eof,
    /// Nothing to read now (the buffer was released).
    WouldBlock,
    /// The socket failed.
    Failed(std::io::Error),
}

/// Capacity of the read buffer between bursts: enough for small messages,
/// small enough for idle connections.
const SMALL: usize = 4 * 1024;

/// A read buffer reused from read to read: [`SMALL`] bytes, grown to
/// [`READ_MAX`] while reads fill it, shrunk back when the socket runs dry.
/// Reads go to spare capacity: nothing is zeroed.
#[derive(Default)]
pub(crate) struct ReadBuf(Vec<u8>);

impl ReadBuf {
    pub(crate) fn read(&mut self, s: &TcpStream) -> Read {
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
        match s.try_read_buf(&mut self.0) {
            Ok(0) => Read::Eof,
            Ok(_) => Read::Data,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if self.0.capacity() > SMALL {
                    self.0 = Vec::with_capacity(SMALL);
                }
                Read::WouldBlock
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Read::WouldBlock,
            Err(e) => Read::Failed(e),
        }
    }

    pub(crate) fn data(&self) -> &[u8] {
        &self.0
    }
}

/// Writes as much of `out` as the socket takes now: `Ok(n)` bytes written
/// (`out` advanced; 0 means "wait for writability").
pub(crate) fn write(s: &TcpStream, out: &mut Bytes) -> std::io::Result<usize> {
    match s.try_write(out) {
        Ok(0) if !out.is_empty() => Err(ErrorKind::WriteZero.into()),
        Ok(n) => {
            out.advance(n);
            Ok(n)
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => Ok(0),
        Err(e) => Err(e),
    }
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
