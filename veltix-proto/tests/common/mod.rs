//! Helpers shared by the integration tests (each includes them with
//! `mod common;`): moving bytes between two sans-IO endpoints, the part
//! every test of a connection, a session or the hub does by hand.
//!
//! `reconnect_model.rs` next to this file is not part of it: it is included
//! on its own by `session_model.rs` and by `tests/tests/sim_network/`.

// Each test file uses only some of the helpers.
#![allow(dead_code)]

use std::time::Instant;

use bytes::Bytes;
use veltix_proto::{ClientSession, Connection, Hub, PeerId};

/// One end of a byte stream, as a driver sees it: what it has to send, the
/// report that it was written, and the bytes read from the other end.
pub trait End {
    fn transmit(&mut self) -> Option<Bytes>;
    fn written(&mut self, now: Instant, n: usize);
    fn input(&mut self, now: Instant, data: &[u8]);
}

impl End for Connection {
    fn transmit(&mut self) -> Option<Bytes> {
        self.poll_transmit()
    }
    fn written(&mut self, now: Instant, n: usize) {
        self.handle_written(now, n);
    }
    fn input(&mut self, now: Instant, data: &[u8]) {
        self.handle_input(now, data);
    }
}

impl End for ClientSession {
    fn transmit(&mut self) -> Option<Bytes> {
        self.poll_transmit()
    }
    fn written(&mut self, now: Instant, n: usize) {
        self.handle_written(now, n);
    }
    fn input(&mut self, now: Instant, data: &[u8]) {
        self.handle_input(now, data);
    }
}

/// A hub's side of one of its peers.
pub struct HubPeer<'a>(pub &'a mut Hub, pub PeerId);

impl End for HubPeer<'_> {
    fn transmit(&mut self) -> Option<Bytes> {
        self.0.poll_transmit(self.1)
    }
    fn written(&mut self, now: Instant, n: usize) {
        self.0.handle_written(self.1, now, n);
    }
    fn input(&mut self, now: Instant, data: &[u8]) {
        self.0.handle_input(self.1, now, data);
    }
}

/// Moves everything both ways (`a`'s bytes first in each round), reporting
/// each write done, until neither end has anything to send.
pub fn pump(a: &mut impl End, b: &mut impl End, now: Instant) {
    // Far more rounds than any exchange of these tests takes: two ends that
    // never stop answering each other fail instead of hanging.
    for _ in 0..1000 {
        let mut moved = false;
        while let Some(x) = a.transmit() {
            a.written(now, x.len());
            b.input(now, &x);
            moved = true;
        }
        while let Some(x) = b.transmit() {
            b.written(now, x.len());
            a.input(now, &x);
            moved = true;
        }
        if !moved {
            return;
        }
    }
    panic!("the two ends still exchange bytes after 1000 rounds");
}

/// [`pump`] between a client (a `Connection` or a `ClientSession`) and its
/// hub `peer`, the client's bytes first.
pub fn pump_hub(hub: &mut Hub, peer: PeerId, client: &mut impl End, now: Instant) {
    pump(client, &mut HubPeer(hub, peer), now);
}
