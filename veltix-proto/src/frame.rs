//! The Veltix frame: a 15-byte header followed by an opaque payload (spec §1).
//!
//! ```text
//! offset  size  field
//!      0     2  magic "VX"
//!      2     1  flags (0x00; ignored on receipt)
//!      3     2  type code, u16 BE
//!      5     4  payload length, u32 BE
//!      9     4  CRC-32 (zlib / ISO-HDLC) of the payload, BE
//!     13     2  request id, u16 BE
//!     15     n  payload
//! ```

use bytes::{BufMut, Bytes};

/// The two magic bytes every frame starts with: ASCII `"VX"`.
pub const MAGIC: [u8; 2] = *b"VX";
/// Length of the frame header in bytes.
pub const HEADER_LEN: usize = 15;
/// Largest payload the length field can describe.
pub const MAX_PAYLOAD_LEN: usize = u32::MAX as usize;
/// Default receiver limit on a whole frame, header included (10 MiB).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 10 * 1024 * 1024;

/// A message type code: a `u16` whose meaning is agreed out of band.
///
/// Codes `0..200` are reserved for the protocol ([`MessageType::PING`] and
/// [`MessageType::PONG`] are the only ones defined), `200..10000` are for
/// applications and `10000..=65535` for plugins.
///
/// ```
/// use veltix_proto::MessageType;
/// let chat = MessageType::new(200);
/// assert!(chat.is_user());
/// assert!(MessageType::PING.is_system());
/// assert_eq!(u16::from(chat), 200);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub struct MessageType(pub u16);

impl MessageType {
    /// PING (type 0): answered automatically with a [`MessageType::PONG`] carrying the same id.
    pub const PING: MessageType = MessageType(0);
    /// PONG (type 1): the answer to a PING.
    pub const PONG: MessageType = MessageType(1);
    /// First code of the application range.
    pub const USER_MIN: u16 = 200;
    /// First code of the plugin range.
    pub const PLUGIN_MIN: u16 = 10_000;

    /// Wraps a raw code.
    pub const fn new(code: u16) -> Self {
        MessageType(code)
    }
    /// The raw code.
    pub const fn code(self) -> u16 {
        self.0
    }
    /// `0..200`: reserved for the protocol.
    pub const fn is_system(self) -> bool {
        self.0 < Self::USER_MIN
    }
    /// `200..10000`: application types.
    pub const fn is_user(self) -> bool {
        self.0 >= Self::USER_MIN && self.0 < Self::PLUGIN_MIN
    }
    /// `10000..=65535`: plugin types.
    pub const fn is_plugin(self) -> bool {
        self.0 >= Self::PLUGIN_MIN
    }
}

impl From<u16> for MessageType {
    fn from(code: u16) -> Self {
        MessageType(code)
    }
}
impl From<MessageType> for u16 {
    fn from(t: MessageType) -> u16 {
        t.0
    }
}
impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            MessageType::PING => f.write_str("PING(0)"),
            MessageType::PONG => f.write_str("PONG(1)"),
            MessageType(c) => write!(f, "{c}"),
        }
    }
}

/// A decoded 15-byte header. Produced by [`Header::parse`]; it says nothing
/// about whether the payload that follows is intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The flags byte (reserved; `0x00` when we send, ignored when we receive).
    pub flags: u8,
    /// Message type.
    pub message_type: MessageType,
    /// Declared payload length.
    pub payload_len: u32,
    /// Declared CRC-32 of the payload.
    pub crc32: u32,
    /// Correlation id.
    pub request_id: u16,
}

impl Header {
    /// Parses a header from the first [`HEADER_LEN`] bytes of `buf`.
    ///
    /// Returns `None` when fewer than 15 bytes are given or the magic is not `VX`.
    #[inline]
    pub fn parse(buf: &[u8]) -> Option<Header> {
        let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        if h[0..2] != MAGIC {
            return None;
        }
        Some(Header {
            flags: h[2],
            message_type: MessageType(u16::from_be_bytes([h[3], h[4]])),
            payload_len: u32::from_be_bytes([h[5], h[6], h[7], h[8]]),
            crc32: u32::from_be_bytes([h[9], h[10], h[11], h[12]]),
            request_id: u16::from_be_bytes([h[13], h[14]]),
        })
    }

    /// Total frame length this header announces (header + payload).
    #[inline]
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }

    /// The header's 15 bytes.
    #[inline]
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut h = [0u8; HEADER_LEN];
        h[0..2].copy_from_slice(&MAGIC);
        h[2] = self.flags;
        h[3..5].copy_from_slice(&self.message_type.0.to_be_bytes());
        h[5..9].copy_from_slice(&self.payload_len.to_be_bytes());
        h[9..13].copy_from_slice(&self.crc32.to_be_bytes());
        h[13..15].copy_from_slice(&self.request_id.to_be_bytes());
        h
    }

    /// The header for sending `payload` (flags `0x00`, CRC computed here).
    ///
    /// # Errors
    /// [`PayloadTooLarge`] when the payload does not fit the u32 length field.
    #[inline]
    pub fn for_payload(
        message_type: MessageType,
        request_id: u16,
        payload: &[u8],
    ) -> Result<Header, PayloadTooLarge> {
        let payload_len =
            u32::try_from(payload.len()).map_err(|_| PayloadTooLarge { len: payload.len() })?;
        Ok(Header {
            flags: 0,
            message_type,
            payload_len,
            crc32: crc32fast::hash(payload),
            request_id,
        })
    }
}

/// A payload longer than `u32::MAX` bytes cannot be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("payload of {len} bytes exceeds the protocol's u32 length field")]
pub struct PayloadTooLarge {
    /// The rejected length.
    pub len: usize,
}

/// One frame: type, request id and payload. The payload is a [`Bytes`], so a
/// decoded frame shares the receive buffer instead of copying it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type.
    pub message_type: MessageType,
    /// The correlation id (§4 of the spec).
    pub request_id: u16,
    /// The flags byte; always `0` on frames we build, kept as received otherwise.
    pub flags: u8,
    /// The payload.
    pub payload: Bytes,
}

impl Frame {
    /// A frame with flags `0`.
    pub fn new(message_type: MessageType, request_id: u16, payload: impl Into<Bytes>) -> Self {
        Frame {
            message_type,
            request_id,
            flags: 0,
            payload: payload.into(),
        }
    }

    /// Length of the encoded frame.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// The header this frame encodes to (CRC computed over the payload).
    ///
    /// # Errors
    /// [`PayloadTooLarge`] when the payload exceeds the u32 length field.
    pub fn header(&self) -> Result<Header, PayloadTooLarge> {
        let mut h = Header::for_payload(self.message_type, self.request_id, &self.payload)?;
        h.flags = self.flags;
        Ok(h)
    }

    /// Appends the encoded frame to `out` (one copy of the payload into `out`).
    /// To send a large payload without copying it, use [`Header::for_payload`]
    /// and write the header and the payload `Bytes` separately (the connection
    /// does this for you).
    ///
    /// # Errors
    /// [`PayloadTooLarge`] when the payload exceeds the u32 length field; `out`
    /// is left untouched.
    ///
    /// ```
    /// use veltix_proto::{Frame, MessageType};
    /// let mut out = Vec::new();
    /// Frame::new(MessageType::new(200), 1, &b"hello"[..]).encode(&mut out).unwrap();
    /// assert_eq!(out[..2], *b"VX");
    /// assert_eq!(out.len(), 15 + 5);
    /// ```
    pub fn encode(&self, out: &mut impl BufMut) -> Result<(), PayloadTooLarge> {
        let h = self.header()?;
        out.put_slice(&h.to_bytes());
        out.put_slice(&self.payload);
        Ok(())
    }

    /// Encodes into a fresh `Vec`.
    ///
    /// # Errors
    /// [`PayloadTooLarge`] when the payload exceeds the u32 length field.
    pub fn to_vec(&self) -> Result<Vec<u8>, PayloadTooLarge> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v)?;
        Ok(v)
    }
}

/// Encodes one frame into `out` without building a [`Frame`]: the fastest path
/// for small payloads.
///
/// # Errors
/// [`PayloadTooLarge`] when the payload exceeds the u32 length field; `out` is
/// left untouched.
#[inline]
pub fn encode_frame(
    message_type: MessageType,
    request_id: u16,
    payload: &[u8],
    out: &mut impl BufMut,
) -> Result<(), PayloadTooLarge> {
    let h = Header::for_payload(message_type, request_id, payload)?;
    out.put_slice(&h.to_bytes());
    out.put_slice(payload);
    Ok(())
}

/// A frame encoded once, to be queued on many connections without encoding
/// or copying it again (a broadcast). Cloning shares the bytes.
///
/// ```
/// use veltix_proto::{EncodedFrame, MessageType};
/// let f = EncodedFrame::new(MessageType::new(300), 32_768, &b"news"[..]).unwrap();
/// assert_eq!(f.bytes().len(), 15 + 4);
/// assert_eq!(f.request_id(), 32_768);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedFrame {
    bytes: Bytes,
}

impl EncodedFrame {
    /// Encodes a frame.
    ///
    /// # Errors
    /// [`PayloadTooLarge`] when the payload exceeds the u32 length field.
    pub fn new(
        message_type: MessageType,
        request_id: u16,
        payload: &[u8],
    ) -> Result<Self, PayloadTooLarge> {
        let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
        encode_frame(message_type, request_id, payload, &mut v)?;
        Ok(EncodedFrame {
            bytes: Bytes::from(v),
        })
    }
    /// The encoded frame.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
    /// Its payload length.
    pub fn payload_len(&self) -> usize {
        self.bytes.len() - HEADER_LEN
    }
    /// Its request id.
    pub fn request_id(&self) -> u16 {
        u16::from_be_bytes([self.bytes[13], self.bytes[14]])
    }
    /// Its type.
    pub fn message_type(&self) -> MessageType {
        MessageType(u16::from_be_bytes([self.bytes[3], self.bytes[4]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worked_example_from_spec() {
        let f = Frame::new(MessageType(200), 1, &b"hello"[..]);
        let bytes = f.to_vec().unwrap();
        let want = [
            0x56, 0x58, 0x00, 0x00, 0xc8, 0x00, 0x00, 0x00, 0x05, 0x36, 0x10, 0xa6, 0x86, 0x00,
            0x01, b'h', b'e', b'l', b'l', b'o',
        ];
        assert_eq!(bytes, want);
        let h = Header::parse(&bytes).unwrap();
        assert_eq!(h.crc32, 0x3610_a686);
        assert_eq!(h.frame_len(), 20);
    }

    #[test]
    fn empty_ping_is_all_zero_after_magic() {
        let bytes = Frame::new(MessageType::PING, 0, Bytes::new())
            .to_vec()
            .unwrap();
        assert_eq!(bytes, [0x56, 0x58, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn parse_rejects_short_and_bad_magic() {
        assert!(Header::parse(b"VX").is_none());
        let mut b = Frame::new(MessageType(1), 2, Bytes::new())
            .to_vec()
            .unwrap();
        assert!(Header::parse(&b).is_some());
        b[1] = b'Y';
        assert!(Header::parse(&b).is_none());
    }

    #[test]
    fn type_ranges() {
        assert!(MessageType(199).is_system());
        assert!(MessageType(200).is_user() && MessageType(9999).is_user());
        assert!(MessageType(10000).is_plugin() && MessageType(65535).is_plugin());
        assert_eq!(MessageType::PONG.to_string(), "PONG(1)");
    }
}
