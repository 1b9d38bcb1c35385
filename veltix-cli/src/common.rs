//! Pieces shared by the subcommands: addresses, payload arguments, durations,
//! payload previews, connecting a client, and Ctrl-C / SIGTERM handling.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use veltix_proto::{payload, ClientConfig};

use crate::driver::{AnyClient, DriverKind};
use crate::exit::CliError;

/// A `HOST:PORT` argument (`[::1]:8080` for IPv6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address, without brackets.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parses `HOST:PORT` (clap value parser).
pub fn parse_target(s: &str) -> Result<Target, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("expected HOST:PORT, got {s:?}"))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() {
        return Err(format!("missing host in {s:?}"));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("invalid port {port:?} (expected 0-65535)"))?;
    Ok(Target {
        host: host.to_owned(),
        port,
    })
}

/// Parses a number of seconds (`0.3`, `5`) into a duration (clap value parser).
pub fn parse_secs(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("expected a number of seconds, got {s:?}"))?;
    Duration::try_from_secs_f64(v).map_err(|_| format!("invalid duration {s:?}"))
}

/// Like [`parse_secs`], but the duration must not be zero.
pub fn parse_positive_secs(s: &str) -> Result<Duration, String> {
    let d = parse_secs(s)?;
    if d.is_zero() {
        return Err("must be greater than 0".into());
    }
    Ok(d)
}

/// A duration in seconds for messages: `0.3s`, `5s`.
pub fn secs(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

/// A duration in milliseconds with 3 decimals, as ping(8) prints it.
pub fn millis(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

/// Where to connect and how long the connect may take.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// The server, as HOST:PORT (e.g. `127.0.0.1:8080`, `[::1]:8080`).
    #[arg(value_name = "HOST:PORT", value_parser = parse_target)]
    pub target: Target,
    /// Deadline for the TCP connect plus the Veltix handshake, in seconds.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_positive_secs)]
    pub connect_timeout: Duration,
    /// Driver to use.
    #[arg(long, value_enum, default_value_t = DriverKind::Std)]
    pub driver: DriverKind,
    /// TLS.
    #[command(flatten)]
    pub tls: crate::tls::ClientTlsArgs,
    /// Authentication.
    #[command(flatten)]
    pub auth: crate::auth::ClientAuthArgs,
}

impl ConnectArgs {
    /// Connects a client (no reconnects) on the chosen driver and completes
    /// the handshake.
    pub fn connect(&self) -> Result<AnyClient, CliError> {
        let config = ClientConfig::new(self.target.host.clone(), self.target.port)
            .handshake_timeout(self.connect_timeout)
            .auth(self.auth.client_auth()?)
            .retry(0);
        config
            .validate()
            .map_err(|e| CliError::from(veltix_proto::Error::from(e)))?;
        let tls = self.tls.config()?;
        let plain = tls.is_none();
        AnyClient::connect(self.driver, config, tls).map_err(|e| {
            // A TLS server waits for a ClientHello and says nothing to a
            // plaintext client, whose handshake then times out.
            let hint = plain
                && matches!(
                    e,
                    veltix_proto::Error::TimedOut {
                        what: veltix_proto::Wait::Handshake,
                        ..
                    }
                );
            let e = CliError::connect(e, &self.target.to_string());
            if hint {
                CliError::new(
                    e.code,
                    format!("{} (if the server requires TLS, add --tls)", e.message),
                )
            } else {
                e
            }
        })
    }

    /// The server's address as connected (`127.0.0.1:8080`), else as given.
    pub fn peer_name(&self, client: &AnyClient) -> String {
        client
            .peer_addr()
            .map_or_else(|| self.target.to_string(), |a| a.to_string())
    }
}

/// The message to send: its type and exactly one payload source.
#[derive(Debug, Clone, Args)]
pub struct MessageArgs {
    /// Message type code (200-9999 for applications, 10000-65535 for plugins;
    /// 0-199 belong to the protocol and need `--system`).
    #[arg(long = "type", short = 't', value_name = "T")]
    pub message_type: u16,
    /// Allow a protocol type (0-199, e.g. 0 = PING): for testing peers only.
    #[arg(long)]
    pub system: bool,
    #[command(flatten)]
    pub payload: PayloadArgs,
}

/// Exactly one of `--text`, `--json`, `--file`.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct PayloadArgs {
    /// Payload: this UTF-8 text.
    #[arg(long, value_name = "S")]
    pub text: Option<String>,
    /// Payload: this JSON value, re-encoded as Python's json.dumps does.
    #[arg(long, value_name = "J")]
    pub json: Option<String>,
    /// Payload: the bytes of this file (`-` reads stdin).
    #[arg(long, value_name = "F")]
    pub file: Option<PathBuf>,
}

impl PayloadArgs {
    /// The payload bytes.
    pub fn bytes(&self) -> Result<Bytes, CliError> {
        if let Some(t) = &self.text {
            return Ok(payload::text(t));
        }
        if let Some(j) = &self.json {
            let value: serde_json::Value = serde_json::from_str(j)
                .map_err(|e| CliError::usage(format!("--json is not valid JSON: {e}")))?;
            return payload::json(&value).map_err(|e| CliError::usage(format!("--json: {e}")));
        }
        if let Some(f) = &self.file {
            let data = if f.as_os_str() == "-" {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin().lock(), &mut v)
                    .map_err(|e| CliError::failure(format!("cannot read stdin: {e}")))?;
                v
            } else {
                std::fs::read(f)
                    .map_err(|e| CliError::failure(format!("cannot read {}: {e}", f.display())))?
            };
            return Ok(Bytes::from(data));
        }
        Err(CliError::usage(
            "one of --text, --json or --file is required",
        ))
    }
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Characters (text) or bytes (hex) shown by [`preview`].
const PREVIEW_CHARS: usize = 60;
const PREVIEW_BYTES: usize = 32;

/// A short, one-line view of a payload: quoted text if it is UTF-8, else
/// `hex 0001…`; `…` marks a cut.
pub fn preview(payload: &[u8]) -> String {
    match std::str::from_utf8(payload) {
        Ok(s) => {
            let shown: String = s.chars().take(PREVIEW_CHARS).collect();
            let cut = if shown.len() < s.len() { "…" } else { "" };
            format!("{shown:?}{cut}")
        }
        Err(_) => {
            let n = payload.len().min(PREVIEW_BYTES);
            let cut = if n < payload.len() { "…" } else { "" };
            format!("hex {}{cut}", hex(&payload[..n]))
        }
    }
}

/// A byte count for humans: `512 B`, `1.5 KiB`, `10.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// Ctrl-C (SIGINT), SIGTERM and SIGHUP, delivered as messages on a channel.
/// A second signal while shutting down exits at once (status 130).
///
/// Returns a sender too, so other stop conditions (stdin closing) can use the
/// same channel. Without a handler (installing it failed), signals keep their
/// default action: the process dies without its summary.
pub fn stop_channel() -> (Sender<()>, Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    let signal_tx = tx.clone();
    let count = AtomicUsize::new(0);
    if let Err(e) = ctrlc::set_handler(move || {
        if count.fetch_add(1, Ordering::SeqCst) > 0 {
            std::process::exit(130);
        }
        let _ = signal_tx.send(());
    }) {
        tracing::warn!(error = %e, "cannot install the Ctrl-C handler");
    }
    (tx, rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = parse_target("127.0.0.1:8080").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 8080));
        let t = parse_target("[::1]:9").unwrap();
        assert_eq!((t.host.as_str(), t.port), ("::1", 9));
        assert_eq!(t.to_string(), "[::1]:9");
        assert!(parse_target("localhost").is_err());
        assert!(parse_target(":80").is_err());
        assert!(parse_target("h:70000").is_err());
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_secs("0.3").unwrap(), Duration::from_millis(300));
        assert!(parse_secs("-1").is_err());
        assert!(parse_secs("nan").is_err());
        assert!(parse_positive_secs("0").is_err());
        assert_eq!(secs(Duration::from_millis(300)), "0.3s");
    }

    #[test]
    fn previews() {
        assert_eq!(preview(b"hi"), "\"hi\"");
        assert_eq!(preview(&[0xff, 0]), "hex ff00");
        let long = "é".repeat(100);
        assert_eq!(preview(long.as_bytes()), format!("{:?}…", "é".repeat(60)));
        assert!(preview(&[0xff; 40]).ends_with('…'));
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
    }

    #[test]
    fn json_payload_is_python_style() {
        let p = PayloadArgs {
            text: None,
            json: Some(r#"{"a":1}"#.into()),
            file: None,
        };
        assert_eq!(&p.bytes().unwrap()[..], br#"{"a": 1}"#);
        let bad = PayloadArgs {
            json: Some("{".into()),
            ..p
        };
        assert_eq!(bad.bytes().unwrap_err().code, crate::exit::USAGE);
    }
}
