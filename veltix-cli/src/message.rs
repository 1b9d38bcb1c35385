//! `veltix send` (fire and forget) and `veltix request` (wait for the reply).

use std::io::Write;
use std::time::{Duration, Instant};

use clap::Args;
use veltix_proto::MessageType;

use crate::common::{hex, millis, parse_positive_secs, ConnectArgs, MessageArgs};
use crate::exit::CliError;

/// Arguments of `veltix send`.
#[derive(Debug, Clone, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub message: MessageArgs,
}

/// Arguments of `veltix request`.
#[derive(Debug, Clone, Args)]
pub struct RequestArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    #[command(flatten)]
    pub message: MessageArgs,
    /// How long to wait for the reply, in seconds.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_positive_secs)]
    pub timeout: Duration,
    /// Write only the reply's raw payload bytes to stdout.
    #[arg(long)]
    pub raw: bool,
}

/// The message type, refusing the protocol's range unless `--system`.
fn message_type(m: &MessageArgs, allow_system: bool) -> Result<MessageType, CliError> {
    let t = MessageType::new(m.message_type);
    if t.is_system() && !(m.system && allow_system) {
        return Err(CliError::usage(if allow_system {
            format!("type {t} is reserved for the protocol (0-199); add --system to send it anyway")
        } else {
            format!("type {t} is reserved for the protocol (0-199); requests use 200 and above")
        }));
    }
    Ok(t)
}

/// How long `send` may wait for room in the outbound queue.
const SEND_WAIT: Duration = Duration::from_secs(30);

/// Connects, sends one message, flushes it and disconnects.
pub fn send(args: &SendArgs) -> Result<(), CliError> {
    let payload = args.message.payload.bytes()?;
    let t = message_type(&args.message, true)?;
    let client = args.connect.connect()?;
    let peer = args.connect.peer_name(&client);
    let size = payload.len();
    let sent = if t.is_system() {
        client.send_system(t, payload)
    } else {
        client.send(t, payload, Some(SEND_WAIT))
    };
    // Flushes what is queued (within the flush deadline), then closes.
    client.disconnect();
    let id = sent.map_err(|e| CliError::from(e).context(format_args!("send to {peer} failed")))?;
    println!("sent to {peer}: type={t} id={id} size={size}");
    Ok(())
}

/// Connects, sends a request and prints the reply.
pub fn request(args: &RequestArgs) -> Result<(), CliError> {
    let payload = args.message.payload.bytes()?;
    let t = message_type(&args.message, false)?;
    let client = args.connect.connect()?;
    let peer = args.connect.peer_name(&client);
    let started = Instant::now();
    let reply = client.request(t, payload, Some(args.timeout));
    let rtt = started.elapsed();
    client.disconnect();
    let reply = reply.map_err(|e| CliError::request(e, &peer, args.timeout))?;

    let mut out = std::io::stdout().lock();
    let written = if args.raw {
        out.write_all(&reply.payload)
    } else {
        let (kind, body) = match std::str::from_utf8(&reply.payload) {
            Ok(text) => ("text", text.to_owned()),
            Err(_) => ("hex", hex(&reply.payload)),
        };
        writeln!(
            out,
            "reply from {peer}: type={} id={} size={} time={} ms ({kind})\n{body}",
            reply.message_type,
            reply.request_id,
            reply.payload.len(),
            millis(rtt),
        )
    };
    written
        .and_then(|()| out.flush())
        .map_err(|e| CliError::failure(format!("cannot write the reply: {e}")))
}
