//! `veltix`: talk to Veltix peers from a shell.
//!
//! * `veltix serve`   a server that prints what happens (and can echo)
//! * `veltix send`    send one message
//! * `veltix request` send a request and print the reply
//! * `veltix ping`    PING a server like ping(8)
//! * `veltix demo`    a server and a client in one process, narrated
//! * `veltix bench`   load scenarios (see `bench.rs`)
//!
//! Every command runs on `veltix-std` by default and on `veltix-tokio` with
//! `--driver tokio`. Exit codes are listed in [`exit`] and at the end of
//! `veltix --help`.

use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};

mod auth;
mod bench;
mod common;
mod demo;
mod driver;
mod exit;
mod message;
mod ping;
mod serve;
mod tls;

use exit::{CliError, EXIT_STATUS_HELP};

/// Talk to Veltix peers (Rust or Python) over TCP.
#[derive(Debug, Parser)]
#[command(name = "veltix", version, after_help = EXIT_STATUS_HELP)]
struct Cli {
    /// More logs on stderr: -v info, -vv debug, -vvv trace (RUST_LOG overrides).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    verbose: u8,
    /// JSON output (bench only; also `veltix bench --json`).
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a server that prints connects, disconnects and messages; stop it with Ctrl-C.
    #[command(after_help = EXIT_STATUS_HELP)]
    Serve(serve::ServeArgs),
    /// Send one message and exit (no reply expected).
    #[command(after_help = EXIT_STATUS_HELP)]
    Send(message::SendArgs),
    /// Send a request and print the reply (type, id, size, payload).
    #[command(after_help = EXIT_STATUS_HELP)]
    Request(message::RequestArgs),
    /// Measure round-trip times with PING frames, like ping(8).
    ///
    /// Exits 0 when at least one PONG came back, 5 when none did, 1 when the
    /// connection dropped.
    #[command(after_help = EXIT_STATUS_HELP)]
    Ping(ping::PingArgs),
    /// Start a server and a client in this process and show them talking.
    #[command(after_help = EXIT_STATUS_HELP)]
    Demo(demo::DemoArgs),
    /// Benchmark scenarios against a loopback server.
    Bench(bench::BenchArgs),
    /// Print an auth-file line for a user (SCRAM-SHA-256 verifier, random
    /// salt); the password is read from stdin or --password-env.
    Passwd(auth::PasswdArgs),
}

/// Logs to stderr: RUST_LOG when set, else the level chosen with -v; none
/// without either.
fn init_tracing(verbose: u8) {
    use tracing_subscriber::filter::{EnvFilter, LevelFilter};
    let env_set = std::env::var_os(EnvFilter::DEFAULT_ENV).is_some();
    if verbose == 0 && !env_set {
        return;
    }
    let level = match verbose {
        0 => LevelFilter::WARN,
        1 => LevelFilter::INFO,
        2 => LevelFilter::DEBUG,
        _ => LevelFilter::TRACE,
    };
    let filter = EnvFilter::builder()
        .with_default_directive(level.into())
        .from_env_lossy();
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_thread_names(true)
        .try_init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.verbose);
    let result = match cli.command {
        Command::Bench(mut args) => {
            args.json |= cli.json;
            return bench::run(&args);
        }
        _ if cli.json => Err(CliError::usage(
            "--json before the subcommand is for `veltix bench` only",
        )),
        Command::Serve(args) => serve::run(&args),
        Command::Send(args) => message::send(&args),
        Command::Request(args) => message::request(&args),
        Command::Ping(args) => ping::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Passwd(args) => auth::passwd(&args),
    };
    match result {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => e.report(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn payload_sources_are_exclusive_and_required() {
        let p = |args: &[&str]| Cli::try_parse_from(args);
        assert!(p(&["veltix", "send", "h:1", "--type", "200", "--text", "x"]).is_ok());
        assert!(p(&["veltix", "send", "h:1", "--type", "200"]).is_err());
        assert!(
            p(&["veltix", "send", "h:1", "--type", "200", "--text", "x", "--json", "1"]).is_err()
        );
        assert!(p(&["veltix", "--json", "bench", "--scenario", "burst"]).is_ok());
        assert!(p(&["veltix", "bench", "--json", "--driver", "tokio"]).is_ok());
        assert!(p(&["veltix", "bench", "--scenario", "nope"]).is_err());
    }
}
