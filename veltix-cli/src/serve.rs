//! `veltix serve`: a server that prints what happens, and can echo.

use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use veltix_std::{Server, ServerConfig};

use crate::common::{human_bytes, preview, stop_channel};
use crate::exit::CliError;

/// Arguments of `veltix serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the first line says which).
    #[arg(long, short = 'p', default_value_t = 8080)]
    pub port: u16,
    /// Answer every message with the same type, id and payload (a Python
    /// `send_and_wait` against this server gets its own bytes back).
    #[arg(long)]
    pub echo: bool,
    /// Connections allowed at once (handshaking ones included); more are
    /// refused with `server_full`. Unlimited by default.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Also stop when stdin reaches end of file (for scripts and tests).
    #[arg(long)]
    pub until_stdin_closes: bool,
}

#[derive(Default)]
struct Counters {
    clients: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    echoed: AtomicU64,
}

/// Seconds since `start`, as a line prefix.
fn stamp(start: Instant) -> String {
    format!("[{:>9.3}]", start.elapsed().as_secs_f64())
}

/// Runs the server until Ctrl-C, SIGTERM/SIGHUP, or (with
/// `--until-stdin-closes`) the end of stdin; then prints a summary.
pub fn run(args: &ServeArgs) -> Result<(), CliError> {
    let max = args
        .max_connections
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    let config = ServerConfig::new(args.host.clone(), args.port).max_connection(max);
    let server = Server::new(config)?;
    let start = Instant::now();
    let counters = Arc::new(Counters::default());

    let c = counters.clone();
    server.on_connect(move |_, client| {
        c.clients.fetch_add(1, Ordering::Relaxed);
        let hello = client.hello().map_or_else(String::new, |h| {
            format!(
                " (v={}, pv={})",
                h.version.as_deref().unwrap_or("?"),
                h.protocol_version
            )
        });
        println!(
            "{} #{} connected from {}{hello}",
            stamp(start),
            client.id(),
            client.addr()
        );
    });
    server.on_disconnect(move |_, client| {
        println!(
            "{} #{} disconnected ({})",
            stamp(start),
            client.id(),
            client.addr()
        );
    });
    let c = counters.clone();
    let echo = args.echo;
    server.on_recv(move |server, client, msg| {
        c.messages.fetch_add(1, Ordering::Relaxed);
        c.bytes
            .fetch_add(msg.payload.len() as u64, Ordering::Relaxed);
        println!(
            "{} #{} message type={} id={} size={} {}",
            stamp(start),
            client.id(),
            msg.message_type,
            msg.request_id,
            msg.payload.len(),
            preview(&msg.payload)
        );
        if echo {
            match server.reply(client, &msg, msg.message_type, msg.payload.clone()) {
                Ok(()) => {
                    c.echoed.fetch_add(1, Ordering::Relaxed);
                }
                Err(veltix_std::Error::Closed(_) | veltix_std::Error::NotConnected) => {
                    println!(
                        "{} #{} not echoed: the client has left",
                        stamp(start),
                        client.id()
                    );
                }
                Err(e) => println!("{} #{} echo failed: {e}", stamp(start), client.id()),
            }
        }
    });

    server.start().map_err(|e| {
        CliError::from(e).context(format_args!("cannot listen on {}:{}", args.host, args.port))
    })?;
    let addr = server
        .local_addr()
        .ok_or_else(|| CliError::failure("the server stopped at once"))?;
    println!(
        "listening on {addr}{}",
        if echo { " (echo on)" } else { "" }
    );

    let (tx, stop) = stop_channel();
    // Without the stdin watcher, this sender keeps the channel open so that
    // `recv` waits for a signal rather than for the channel to close.
    let _keep_open = if args.until_stdin_closes {
        std::thread::Builder::new()
            .name("stdin-watch".into())
            .spawn(move || {
                let mut sink = [0u8; 4096];
                let mut stdin = std::io::stdin().lock();
                loop {
                    match stdin.read(&mut sink) {
                        Ok(0) => break,
                        Err(e) if e.kind() != std::io::ErrorKind::Interrupted => break,
                        _ => {}
                    }
                }
                let _ = tx.send(());
            })
            .map_err(|e| CliError::failure(format!("cannot watch stdin: {e}")))?;
        None
    } else {
        Some(tx)
    };
    let _ = stop.recv();

    server.close_all();
    let plural = |n: u64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
    println!(
        "veltix serve: stopped after {:.1}s: {}, {} ({}) received, {} echoed",
        start.elapsed().as_secs_f64(),
        plural(counters.clients.load(Ordering::Relaxed), "client"),
        plural(counters.messages.load(Ordering::Relaxed), "message"),
        human_bytes(counters.bytes.load(Ordering::Relaxed)),
        counters.echoed.load(Ordering::Relaxed),
    );
    Ok(())
}
