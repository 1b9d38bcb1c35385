//! `veltix bench`: load scenarios against a loopback server (not implemented yet).
//!
//! This file is self-contained on purpose: `main.rs` only needs
//! [`BenchArgs`] (a clap `Args` struct) and [`run`], so the benchmark can be
//! written by replacing this file alone. `main.rs` ORs the top-level
//! `veltix --json bench` flag into [`BenchArgs::json`] before calling [`run`].

use std::process::ExitCode;

use clap::{Args, ValueEnum};

/// Which benchmark scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Request/reply round-trip latency.
    Latency,
    /// Throughput of a burst of one-way messages.
    Burst,
    /// Many clients at once.
    Stress,
    /// Memory per connection.
    Memory,
    /// Every scenario, one after the other.
    All,
}

/// Which driver to benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Driver {
    /// `veltix-std` (blocking, std threads).
    Std,
    /// `veltix-tokio` (async).
    Tokio,
}

/// Arguments of `veltix bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Scenario to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    pub scenario: Scenario,
    /// Driver to benchmark.
    #[arg(long, value_enum, default_value_t = Driver::Std)]
    pub driver: Driver,
    /// Print the results as JSON (also `veltix --json bench`).
    #[arg(long)]
    pub json: bool,
}

/// Runs the benchmark (a stub for now: exit 2).
pub fn run(args: &BenchArgs) -> ExitCode {
    tracing::debug!(?args, "bench requested");
    eprintln!("veltix bench: not implemented yet");
    ExitCode::from(2)
}
