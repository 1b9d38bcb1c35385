//! `veltix serve`: a server that prints what happens, and can echo.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use veltix_proto::{Deadlines, Error, Frame, PeerHello, ServerConfig};

use crate::common::{human_bytes, parse_positive_secs, parse_secs, preview, stop_channel};
use crate::driver::DriverKind;
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
    /// Driver to run the server on.
    #[arg(long, value_enum, default_value_t = DriverKind::Std)]
    pub driver: DriverKind,
    /// Answer every message with the same type, id and payload (a Python
    /// `send_and_wait` against this server gets its own bytes back).
    #[arg(long)]
    pub echo: bool,
    /// Connections allowed at once (handshaking ones included); more are
    /// refused with `server_full` (default: 10 000, lowered to fit the fd limit).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,
    /// Close a connection at its first corrupt frame instead of resynchronising.
    #[arg(long)]
    pub strict: bool,
    /// Disconnect a client whose output makes no progress for this long
    /// (it stopped reading), in seconds (default 30).
    #[arg(long, value_name = "SECS", value_parser = parse_positive_secs)]
    pub write_timeout: Option<Duration>,
    /// On shutdown, how long queued output may take to drain, in seconds.
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub flush_timeout: Duration,
    /// Also stop when stdin reaches end of file (for scripts and tests).
    #[arg(long)]
    pub until_stdin_closes: bool,
    /// TLS.
    #[command(flatten)]
    pub tls: crate::tls::ServerTlsArgs,
    /// Authentication.
    #[command(flatten)]
    pub auth: crate::auth::ServerAuthArgs,
}

#[derive(Default)]
struct Counters {
    clients: AtomicU64,
    messages: AtomicU64,
    bytes: AtomicU64,
    echoed: AtomicU64,
}

/// What the server prints, the same on both drivers.
struct Narration {
    start: Instant,
    counters: Counters,
}

impl Narration {
    fn stamp(&self) -> String {
        format!("[{:>9.3}]", self.start.elapsed().as_secs_f64())
    }

    fn connected(
        &self,
        id: u64,
        addr: SocketAddr,
        hello: Option<PeerHello>,
        tls: Option<veltix_tls::TlsInfo>,
    ) {
        self.counters.clients.fetch_add(1, Ordering::Relaxed);
        let hello = hello.map_or_else(String::new, |h| {
            let who = h
                .identity()
                .map_or_else(String::new, |i| format!(" as {i}"));
            format!(
                "{who} (v={}, pv={})",
                h.version.as_deref().unwrap_or("?"),
                h.protocol_version
            )
        });
        let tls = tls.map_or_else(String::new, |t| format!(" [TLS: {t}]"));
        println!("{} #{id} connected from {addr}{hello}{tls}", self.stamp());
    }

    fn disconnected(&self, id: u64, addr: SocketAddr) {
        println!("{} #{id} disconnected ({addr})", self.stamp());
    }

    fn message(&self, id: u64, msg: &Frame) {
        self.counters.messages.fetch_add(1, Ordering::Relaxed);
        self.counters
            .bytes
            .fetch_add(msg.payload.len() as u64, Ordering::Relaxed);
        println!(
            "{} #{id} message type={} id={} size={} {}",
            self.stamp(),
            msg.message_type,
            msg.request_id,
            msg.payload.len(),
            preview(&msg.payload)
        );
    }

    fn echoed(&self, id: u64, r: Result<(), Error>) {
        match r {
            Ok(()) => {
                self.counters.echoed.fetch_add(1, Ordering::Relaxed);
            }
            Err(Error::Closed(_) | Error::NotConnected) => {
                println!("{} #{id} not echoed: the client has left", self.stamp());
            }
            Err(e) => println!("{} #{id} echo failed: {e}", self.stamp()),
        }
    }

    fn summary(&self) {
        let c = &self.counters;
        let plural = |n: u64, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        println!(
            "veltix serve: stopped after {:.1}s: {}, {} ({}) received, {} echoed",
            self.start.elapsed().as_secs_f64(),
            plural(c.clients.load(Ordering::Relaxed), "client"),
            plural(c.messages.load(Ordering::Relaxed), "message"),
            human_bytes(c.bytes.load(Ordering::Relaxed)),
            c.echoed.load(Ordering::Relaxed),
        );
    }
}

fn config(args: &ServeArgs) -> Result<ServerConfig, CliError> {
    let mut config = ServerConfig::new(args.host.clone(), args.port).strict(args.strict);
    if let Some((auth, rule)) = args.auth.server_auth()? {
        config = config.auth(Some(auth)).duplicate_identity(rule);
    }
    if let Some(n) = args.max_connections {
        config = config.max_connection(Some(usize::try_from(n).unwrap_or(usize::MAX)));
    }
    let mut deadlines = Deadlines::default();
    if let Some(t) = args.write_timeout {
        deadlines.write_timeout = Some(t);
    }
    deadlines.flush_timeout = args.flush_timeout;
    Ok(config.deadlines(deadlines))
}

/// Blocks until Ctrl-C, SIGTERM/SIGHUP, or (with `--until-stdin-closes`)
/// the end of stdin.
fn wait_for_stop(args: &ServeArgs) -> Result<(), CliError> {
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
    Ok(())
}

fn listening(args: &ServeArgs, addr: SocketAddr, tls: Option<&str>) {
    let auth = match (&args.auth.auth_file, args.auth.auth_optional) {
        (None, _) => "",
        (Some(_), false) => " (authentication required)",
        (Some(_), true) => " (authentication offered)",
    };
    println!(
        "listening on {addr}{}{auth} (driver {})",
        if args.echo { " (echo on)" } else { "" },
        args.driver.name()
    );
    if let Some(tls) = tls {
        println!("{tls}");
    }
}

fn cannot_listen(args: &ServeArgs) -> impl Fn(Error) -> CliError + '_ {
    move |e| CliError::from(e).context(format_args!("cannot listen on {}:{}", args.host, args.port))
}

fn run_std(args: &ServeArgs, n: Arc<Narration>) -> Result<(), CliError> {
    use veltix_std::Server;
    let tls = args.tls.config()?;
    let config = config(args)?;
    let (server, what) = match tls {
        Some((tls, what)) => (Server::with_tls(config, tls)?, Some(what)),
        None => (Server::new(config)?, None),
    };
    let m = n.clone();
    server.on_connect(move |_, c| m.connected(c.id(), c.addr(), c.hello(), c.tls_info()));
    let m = n.clone();
    server.on_disconnect(move |_, c| m.disconnected(c.id(), c.addr()));
    let echo = args.echo;
    let m = n.clone();
    server.on_recv(move |server, c, msg| {
        m.message(c.id(), &msg);
        if echo {
            m.echoed(
                c.id(),
                server.reply(c, &msg, msg.message_type, msg.payload.clone()),
            );
        }
    });
    server.start().map_err(cannot_listen(args))?;
    let addr = server
        .local_addr()
        .ok_or_else(|| CliError::failure("the server stopped at once"))?;
    listening(args, addr, what.as_deref());
    wait_for_stop(args)?;
    server.shutdown(args.flush_timeout);
    Ok(())
}

fn run_tokio(args: &ServeArgs, n: Arc<Narration>) -> Result<(), CliError> {
    use veltix_tokio::Server;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::failure(format!("cannot start the tokio runtime: {e}")))?;
    let tls = args.tls.config()?;
    let config = config(args)?;
    let (server, what) = {
        let _rt = rt.enter();
        match tls {
            Some((tls, what)) => (Server::with_tls(config, tls)?, Some(what)),
            None => (Server::new(config)?, None),
        }
    };
    let m = n.clone();
    server.on_connect(move |_, c| {
        m.connected(c.id(), c.addr(), c.hello(), c.tls_info());
        async {}
    });
    let m = n.clone();
    server.on_disconnect(move |_, c| {
        m.disconnected(c.id(), c.addr());
        async {}
    });
    let echo = args.echo;
    let m = n.clone();
    server.on_recv(move |server, c, msg| {
        m.message(c.id(), &msg);
        if echo {
            m.echoed(
                c.id(),
                server.reply(&c, &msg, msg.message_type, msg.payload.clone()),
            );
        }
        async {}
    });
    rt.block_on(server.start()).map_err(cannot_listen(args))?;
    let addr = server
        .local_addr()
        .ok_or_else(|| CliError::failure("the server stopped at once"))?;
    listening(args, addr, what.as_deref());
    wait_for_stop(args)?;
    rt.block_on(server.shutdown(args.flush_timeout));
    Ok(())
}

/// Runs the server until Ctrl-C, SIGTERM/SIGHUP, or (with
/// `--until-stdin-closes`) the end of stdin; then shuts down (queued output
/// drains within `--flush-timeout`) and prints a summary.
pub fn run(args: &ServeArgs) -> Result<(), CliError> {
    let n = Arc::new(Narration {
        start: Instant::now(),
        counters: Counters::default(),
    });
    match args.driver {
        DriverKind::Std => run_std(args, n.clone())?,
        DriverKind::Tokio => run_tokio(args, n.clone())?,
    }
    n.summary();
    Ok(())
}
