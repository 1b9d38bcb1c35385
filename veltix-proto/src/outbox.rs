//! The outbound byte queue of a connection.
//!
//! Small frames are encoded back to back into one buffer, so a driver that
//! calls [`poll_transmit`](crate::Connection::poll_transmit) once writes many
//! frames with one syscall. A large payload is not copied: its header closes
//! the current buffer and the payload `Bytes` is queued as its own chunk.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::frame::{Header, HEADER_LEN};

/// Payloads up to this size are copied into the coalescing buffer.
pub(crate) const COPY_MAX: usize = 4096;

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    chunks: VecDeque<Bytes>,
    tail: BytesMut,
    queued: usize,
}

impl Outbox {
    /// Bytes waiting to be handed out.
    pub(crate) fn len(&self) -> usize {
        self.queued
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queued == 0
    }

    fn seal_tail(&mut self) {
        if !self.tail.is_empty() {
            self.chunks.push_back(self.tail.split().freeze());
        }
    }

    /// Queues already encoded bytes (handshake messages, pre-encoded frames).
    pub(crate) fn push_raw(&mut self, b: Bytes) {
        if b.is_empty() {
            return;
        }
        self.queued += b.len();
        if b.len() <= COPY_MAX {
            self.tail.extend_from_slice(&b);
        } else {
            self.seal_tail();
            self.chunks.push_back(b);
        }
    }

    /// Queues one frame.
    pub(crate) fn push_frame(&mut self, header: &Header, payload: &Bytes) {
        self.queued += HEADER_LEN + payload.len();
        let need = HEADER_LEN + payload.len().min(COPY_MAX);
        if self.tail.capacity() - self.tail.len() < need {
            // Grow in steps large enough to batch many small frames.
            self.tail.reserve(need.max(self.tail.len()).max(4096));
        }
        self.tail.extend_from_slice(&header.to_bytes());
        if payload.len() <= COPY_MAX {
            self.tail.extend_from_slice(payload);
        } else {
            self.seal_tail();
            self.chunks.push_back(payload.clone());
        }
    }

    /// The next contiguous run of bytes to write.
    pub(crate) fn pop(&mut self) -> Option<Bytes> {
        let b = match self.chunks.pop_front() {
            Some(b) => b,
            // Take the whole buffer: an idle connection then holds no allocation.
            None if !self.tail.is_empty() => std::mem::take(&mut self.tail).freeze(),
            None => return None,
        };
        self.queued -= b.len();
        Some(b)
    }

    /// Drops everything; returns how many bytes were dropped.
    pub(crate) fn clear(&mut self) -> usize {
        let n = self.queued;
        *self = Outbox::default();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::MessageType;

    fn hdr(p: &[u8]) -> Header {
        Header::for_payload(MessageType(200), 0, p).unwrap()
    }

    #[test]
    fn small_frames_coalesce_into_one_chunk() {
        let mut o = Outbox::default();
        let p = Bytes::from_static(b"abc");
        for _ in 0..100 {
            o.push_frame(&hdr(&p), &p);
        }
        assert_eq!(o.len(), 100 * 18);
        let c = o.pop().unwrap();
        assert_eq!(c.len(), 100 * 18);
        assert!(o.pop().is_none());
        assert!(o.is_empty());
    }

    #[test]
    fn large_payload_is_not_copied_and_order_is_kept() {
        let mut o = Outbox::default();
        let big = Bytes::from(vec![1u8; COPY_MAX + 1]);
        let small = Bytes::from_static(b"z");
        o.push_frame(&hdr(&small), &small);
        o.push_frame(&hdr(&big), &big);
        o.push_frame(&hdr(&small), &small);
        let a = o.pop().unwrap();
        assert_eq!(a.len(), 16 + 15);
        let b = o.pop().unwrap();
        assert_eq!(b.as_ptr(), big.as_ptr(), "payload shared, not copied");
        let c = o.pop().unwrap();
        assert_eq!(c.len(), 16);
        assert_eq!(o.len(), 0);
        assert_eq!(o.clear(), 0);
    }
}
