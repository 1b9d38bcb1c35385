//! A two-core simulator: a client and a server `Connection` joined by an
//! in-memory link with latency, on a virtual clock, with seeded segmentation.
//!
//! Time only moves when the simulator moves it, to the next instant at which
//! something can happen (a segment arrives, or a core's `poll_timeout`), so a
//! scenario of minutes of virtual time runs in microseconds and replays
//! exactly from its seed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use veltix_proto::{Connection, ConnectionConfig, Event};

/// A seeded xorshift generator (tests only need reproducibility).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// One direction of the link: bytes in flight with their arrival times.
#[derive(Debug, Default)]
pub struct Pipe {
    in_flight: VecDeque<(Instant, Bytes)>,
}

impl Pipe {
    fn next_arrival(&self) -> Option<Instant> {
        self.in_flight.front().map(|&(t, _)| t)
    }
}

/// What the simulated application does with each event of one side.
pub type App = Box<dyn FnMut(&mut Connection, Instant, &Event)>;

/// Which side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Client,
    Server,
}

pub struct Sim {
    pub now: Instant,
    pub epoch: Instant,
    pub client: Connection,
    pub server: Connection,
    /// One-way latency of the link.
    pub latency: Duration,
    /// Split every delivered segment into random pieces (seeded).
    pub segment: bool,
    c2s: Pipe,
    s2c: Pipe,
    pub rng: Rng,
    pub client_events: Vec<(Duration, Event)>,
    pub server_events: Vec<(Duration, Event)>,
    pub client_app: Option<App>,
    pub server_app: Option<App>,
}

impl Sim {
    /// Both ends with the same config, `latency` one way.
    pub fn new(config: ConnectionConfig, latency: Duration, seed: u64) -> Self {
        let config = Arc::new(config);
        Self::with_configs(config.clone(), config, latency, seed)
    }

    pub fn with_configs(
        client: Arc<ConnectionConfig>,
        server: Arc<ConnectionConfig>,
        latency: Duration,
        seed: u64,
    ) -> Self {
        let epoch = Instant::now();
        Sim {
            now: epoch,
            epoch,
            client: Connection::client(client, epoch),
            server: Connection::server(server, epoch),
            latency,
            segment: true,
            c2s: Pipe::default(),
            s2c: Pipe::default(),
            rng: Rng::new(seed),
            client_events: Vec::new(),
            server_events: Vec::new(),
            client_app: None,
            server_app: None,
        }
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.epoch
    }

    /// Puts raw bytes on the wire towards `to`, arriving `after` from now
    /// (after anything already in flight): a fake peer.
    pub fn inject(&mut self, to: End, after: Duration, bytes: &[u8]) {
        let pipe = match to {
            End::Client => &mut self.s2c,
            End::Server => &mut self.c2s,
        };
        let at = (self.now + after).max(pipe.in_flight.back().map_or(self.now, |&(t, _)| t));
        pipe.in_flight
            .push_back((at, Bytes::copy_from_slice(bytes)));
    }

    /// Replaces one end by a fake peer: the real core is dropped from the
    /// wire (its queued output discarded, its events no longer logged).
    pub fn silence(&mut self, end: End) {
        let (conn, pipe) = match end {
            End::Client => (&mut self.client, &mut self.c2s),
            End::Server => (&mut self.server, &mut self.s2c),
        };
        let e = std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "replaced by a fake peer",
        );
        conn.handle_transport_error(self.now, &e);
        while conn.poll_event().is_some() {}
        pipe.in_flight.clear();
    }

    /// Moves output into pipes and events into the logs/apps, until quiet.
    fn flush(&mut self) {
        loop {
            let mut progressed = false;
            for end in [End::Client, End::Server] {
                let (conn, pipe, log, app) = match end {
                    End::Client => (
                        &mut self.client,
                        &mut self.c2s,
                        &mut self.client_events,
                        &mut self.client_app,
                    ),
                    End::Server => (
                        &mut self.server,
                        &mut self.s2c,
                        &mut self.server_events,
                        &mut self.server_app,
                    ),
                };
                // The link takes everything at once: written as soon as taken.
                while let Some(b) = conn.poll_transmit() {
                    conn.handle_written(self.now, b.len());
                    let at = self.now + self.latency;
                    pipe.in_flight.push_back((at, b));
                    progressed = true;
                }
                while let Some(e) = conn.poll_event() {
                    if let Some(app) = app.as_mut() {
                        app(conn, self.now, &e);
                    }
                    log.push((self.now - self.epoch, e));
                    progressed = true;
                }
            }
            if !progressed {
                return;
            }
        }
    }

    /// Earliest instant at which anything can happen.
    fn next_wakeup(&self) -> Option<Instant> {
        [
            self.c2s.next_arrival(),
            self.s2c.next_arrival(),
            self.client.poll_timeout(),
            self.server.poll_timeout(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn deliver(&mut self, end: End) {
        let (pipe, conn) = match end {
            End::Client => (&mut self.s2c, &mut self.client),
            End::Server => (&mut self.c2s, &mut self.server),
        };
        while pipe.next_arrival().is_some_and(|t| t <= self.now) {
            let (_, bytes) = pipe.in_flight.pop_front().expect("checked");
            if self.segment && bytes.len() > 1 {
                let mut rest = &bytes[..];
                while !rest.is_empty() {
                    let n = 1 + self.rng.below(rest.len() as u64) as usize;
                    conn.handle_input(self.now, &rest[..n]);
                    rest = &rest[n..];
                }
            } else {
                conn.handle_input(self.now, &bytes);
            }
        }
    }

    /// Runs until `done` holds or virtual time passes `limit`. Returns whether `done` held.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let deadline = self.epoch + limit;
        loop {
            self.flush();
            if done(self) {
                return true;
            }
            let Some(t) = self.next_wakeup() else {
                return false; // nothing can ever happen again
            };
            if t > deadline {
                self.now = deadline;
                return done(self);
            }
            // Time never goes backwards, and always moves when the wakeup is now.
            self.now = self.now.max(t);
            self.deliver(End::Client);
            self.deliver(End::Server);
            self.client.handle_timeout(self.now);
            self.server.handle_timeout(self.now);
        }
    }

    /// Runs until both sides are quiet (no timers, nothing in flight) or `limit`.
    pub fn run_idle(&mut self, limit: Duration) {
        self.run_until(limit, |_| false);
    }

    /// The TCP connection drops: each side is told at its end.
    pub fn cut(&mut self) {
        self.c2s.in_flight.clear();
        self.s2c.in_flight.clear();
        self.client.handle_eof(self.now);
        self.server.handle_eof(self.now);
        self.flush();
    }

    pub fn events(&self, end: End) -> &[(Duration, Event)] {
        match end {
            End::Client => &self.client_events,
            End::Server => &self.server_events,
        }
    }

    /// Events of one side, without their times.
    pub fn kinds(&self, end: End) -> Vec<&Event> {
        self.events(end).iter().map(|(_, e)| e).collect()
    }

    pub fn connected(&self, end: End) -> bool {
        self.events(end)
            .iter()
            .any(|(_, e)| matches!(e, Event::Connected(_)))
    }

    pub fn closed(&self, end: End) -> Option<&Event> {
        self.events(end)
            .iter()
            .map(|(_, e)| e)
            .find(|e| matches!(e, Event::Closed { .. }))
    }
}
