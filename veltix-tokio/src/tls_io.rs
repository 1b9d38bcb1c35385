//! TLS on tokio: `tokio_rustls` streams, and their errors mapped to
//! [`TlsError`] (the configs, provider and error type are `veltix-tls`'s,
//! shared with `veltix-std`).

use std::io::ErrorKind;

use veltix_tls::TlsError;

/// An I/O error of a TLS stream with the rustls error inside it (or an
/// EOF in the middle of the handshake) rewrapped as a [`TlsError`], so the
/// drivers can tell TLS failures from socket ones. Other errors pass.
pub(crate) fn classify(e: std::io::Error, handshaking: bool) -> std::io::Error {
    if TlsError::in_io(&e).is_some() {
        return e;
    }
    if let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        return TlsError::from_rustls(r.clone(), handshaking).into_io();
    }
    if handshaking && e.kind() == ErrorKind::UnexpectedEof {
        return TlsError::HandshakeEof.into_io();
    }
    e
}
