//! Exit codes and the error type every subcommand returns.
//!
//! The codes are part of the command's interface (documented in `--help`):
//! scripts branch on them, so each class of failure keeps its own code.

use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use veltix_proto::Error;

use crate::common::secs;

/// Success.
pub const OK: u8 = 0;
/// Generic failure: the request failed, the connection closed, an I/O error.
pub const FAILURE: u8 = 1;
/// Bad usage: invalid arguments (clap uses 2 as well).
pub const USAGE: u8 = 2;
/// Could not connect: connection refused, address not resolvable or unreachable.
pub const REFUSED: u8 = 3;
/// The server rejected us during the handshake (`server_full`).
pub const REJECTED: u8 = 4;
/// Timed out: TCP connect, handshake, reply, or every ping.
pub const TIMEOUT: u8 = 5;
/// Protocol error: handshake failure, protocol version mismatch.
pub const PROTOCOL: u8 = 6;
/// Authentication failed or was required and not possible.
pub const AUTH: u8 = 7;
/// TLS failed: an untrusted, expired or misnamed certificate, a missing
/// client certificate, or a peer that does not speak TLS.
pub const TLS: u8 = 8;

/// The exit-status table printed at the end of `veltix --help`.
pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  failure: request failed, connection closed, I/O error, a demo step failed
  2  usage error: invalid arguments or --json text
  3  cannot connect: connection refused, address not resolvable or unreachable
  4  rejected by the server during the handshake (the reason is printed, e.g. server_full)
  5  timed out: connecting, the handshake, waiting for a reply, or every ping
  6  protocol error: handshake failure or protocol version mismatch
  7  authentication failed, required by the server, or the server did not prove itself
  8  TLS failed: certificate not trusted, expired or for another name, client
     certificate missing, or the peer does not speak TLS

Errors are printed to stderr as `veltix: <error>`. -v/--verbose (repeatable) or
RUST_LOG (e.g. RUST_LOG=veltix_std=debug) turn on the drivers' logs on stderr.";

/// A failure to report: `veltix: <message>` on stderr, then exit with `code`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// The process exit code (one of the constants above).
    pub code: u8,
    /// What went wrong, for a human.
    pub message: String,
}

impl CliError {
    /// An error with an explicit code.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        CliError {
            code,
            message: message.into(),
        }
    }

    /// A generic failure (exit 1).
    pub fn failure(message: impl Into<String>) -> Self {
        Self::new(FAILURE, message)
    }

    /// A usage error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }

    /// Prefixes the message with some context (`context: message`).
    pub fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }

    /// Prints `veltix: <message>` to stderr and returns the exit code.
    pub fn report(&self) -> ExitCode {
        eprintln!("veltix: {}", self.message);
        ExitCode::from(self.code)
    }

    /// A failed `connect()` to `target`.
    pub fn connect(e: Error, target: &str) -> Self {
        match e {
            Error::Refused(addr) => Self::new(REFUSED, format!("connection refused by {addr}")),
            Error::Resolve(name) => Self::new(REFUSED, format!("cannot resolve {name}")),
            Error::Io(e) => Self::new(REFUSED, format!("cannot connect to {target}: {e}")),
            Error::TimedOut { what, after } => Self::new(
                TIMEOUT,
                format!(
                    "connecting to {target} timed out ({}) after {}",
                    match what {
                        veltix_proto::Wait::Connect => "TCP connect",
                        _ => "handshake",
                    },
                    secs(after)
                ),
            ),
            Error::Rejected(reason) => Self::new(
                REJECTED,
                format!("{target} rejected the connection: {reason}"),
            ),
            Error::VersionMismatch(v) => Self::new(
                PROTOCOL,
                format!("protocol version mismatch: {target} speaks protocol {v}"),
            ),
            Error::Handshake(e) if e.is_permanent() => Self::new(AUTH, format!("{target}: {e}")),
            Error::Handshake(veltix_proto::HandshakeError::IdentityInUse) => Self::new(
                REJECTED,
                format!("{target} rejected the connection: this identity is already connected"),
            ),
            Error::Handshake(e) => {
                Self::new(PROTOCOL, format!("handshake with {target} failed: {e}"))
            }
            Error::Tls(e) => Self::new(TLS, format!("TLS with {target} failed: {e}")),
            Error::Closed(r) => Self::new(
                FAILURE,
                format!("connection to {target} closed during the handshake: {r}"),
            ),
            e => Self::from(e).context(format_args!("cannot connect to {target}")),
        }
    }

    /// A failed `send_and_wait` to `target` (waited `timeout`).
    pub fn request(e: Error, target: &str, timeout: Duration) -> Self {
        match e {
            Error::TimedOut { .. } => Self::new(
                TIMEOUT,
                format!("no reply from {target} within {}", secs(timeout)),
            ),
            Error::Closed(r) => Self::new(
                FAILURE,
                format!("connection to {target} closed before the reply: {r}"),
            ),
            e => Self::from(e).context(format_args!("request to {target} failed")),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (exit {})", self.message, self.code)
    }
}

impl From<Error> for CliError {
    /// The code of a driver error met anywhere (see [`CliError::connect`] and
    /// [`CliError::request`] for messages with more context).
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::Config(_) => USAGE,
            Error::Refused(_) | Error::Resolve(_) => REFUSED,
            Error::Rejected(_) => REJECTED,
            Error::TimedOut { .. } => TIMEOUT,
            Error::VersionMismatch(_) | Error::Handshake(_) => PROTOCOL,
            Error::Tls(_) => TLS,
            _ => FAILURE,
        };
        CliError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_errors_map_to_documented_codes() {
        let t = "127.0.0.1:9";
        let c = |e| CliError::connect(e, t).code;
        assert_eq!(c(Error::Refused(t.into())), REFUSED);
        assert_eq!(c(Error::Rejected("server_full".into())), REJECTED);
        let timed_out = |what| Error::TimedOut {
            what,
            after: Duration::from_secs(1),
        };
        assert_eq!(c(timed_out(veltix_proto::Wait::Connect)), TIMEOUT);
        assert_eq!(c(timed_out(veltix_proto::Wait::Handshake)), TIMEOUT);
        assert_eq!(c(Error::VersionMismatch("2.0".into())), PROTOCOL);
        assert_eq!(c(veltix_tls::TlsError::NotTls.into()), TLS);
        let e = CliError::request(
            timed_out(veltix_proto::Wait::Request),
            t,
            Duration::from_millis(300),
        );
        assert_eq!(e.code, TIMEOUT);
        assert!(e.message.contains("0.3s"), "{}", e.message);
        let e = CliError::connect(Error::Rejected("server_full".into()), t);
        assert!(e.message.contains("server_full"));
        assert_eq!(CliError::from(Error::NotConnected).code, FAILURE);
    }
}
