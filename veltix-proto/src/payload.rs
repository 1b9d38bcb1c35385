//! Payload helpers: raw bytes, UTF-8 text and JSON, encoded as Veltix's
//! `Request(text=…)` / `Request(json=…)` do.
//!
//! JSON is written like Python's `json.dumps` defaults (separators `", "` and
//! `": "`, non-ASCII escaped as `\uXXXX`), so a Python peer sees the same
//! bytes it would send itself.
//!
//! ```
//! use serde_json::json;
//! use veltix_proto::payload;
//! let p = payload::json(&json!({"msg": "café"})).unwrap();
//! assert_eq!(&p[..], br#"{"msg": "caf\u00e9"}"#);
//! let back: serde_json::Value = payload::decode_json(&p).unwrap();
//! assert_eq!(back["msg"], "café");
//! ```

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::frame::Frame;
use crate::json::to_vec_python;

/// A payload that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// The payload is not UTF-8.
    #[error("payload is not UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    /// The payload is not the expected JSON, or the value cannot be serialized.
    #[error("payload JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// UTF-8 text as a payload.
pub fn text(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// A value as Python-compatible JSON (`ensure_ascii=True`).
///
/// # Errors
/// [`PayloadError::Json`] if `value` cannot be serialized.
pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Bytes, PayloadError> {
    Ok(Bytes::from(to_vec_python(value, true)?))
}

/// The payload as text.
///
/// # Errors
/// [`PayloadError::Utf8`] when it is not UTF-8.
pub fn decode_text(payload: &[u8]) -> Result<&str, PayloadError> {
    Ok(std::str::from_utf8(payload)?)
}

/// The payload as JSON.
///
/// # Errors
/// [`PayloadError::Json`] when it is not JSON of type `T`.
pub fn decode_json<T: DeserializeOwned>(payload: &[u8]) -> Result<T, PayloadError> {
    Ok(serde_json::from_slice(payload)?)
}

impl Frame {
    /// The payload as text.
    ///
    /// # Errors
    /// [`PayloadError::Utf8`] when it is not UTF-8.
    pub fn text(&self) -> Result<&str, PayloadError> {
        decode_text(&self.payload)
    }

    /// The payload as JSON.
    ///
    /// # Errors
    /// [`PayloadError::Json`] when it is not JSON of type `T`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        decode_json(&self.payload)
    }

    /// Whether the payload is UTF-8 text (Python veltix's `is_text`).
    ///
    /// ```
    /// use veltix_proto::{Frame, MessageType};
    /// let f = Frame::new(MessageType::new(200), 0, &b"hi"[..]);
    /// assert!(f.is_text() && !f.is_json());
    /// let f = Frame::new(MessageType::new(200), 0, &br#"{"a": 1}"#[..]);
    /// assert!(f.is_text() && f.is_json());
    /// assert!(!Frame::new(MessageType::new(200), 0, vec![0xff]).is_text());
    /// ```
    pub fn is_text(&self) -> bool {
        std::str::from_utf8(&self.payload).is_ok()
    }

    /// Whether the payload is one JSON value (Python veltix's `is_json`).
    pub fn is_json(&self) -> bool {
        decode_json::<serde_json::Value>(&self.payload).is_ok()
    }
}
