//! `veltix bench`: the scenarios of Python veltix's benchmark
//! (`python -m veltix.benchmark`, veltix 3.3.0), on a loopback server in this
//! process, each beside a raw-TCP baseline measured in the same run.
//!
//! | scenario  | what (defaults = Python's)                      | reported |
//! |-----------|-------------------------------------------------|----------|
//! | `memory`  | RSS growth per connected idle client, both ends in this process: 10 clients first, then `--idle` (40) more; (RSS after − RSS before) / `--idle` (Python's "10 -> 50" slope) | bytes |
//! | `latency` | `--iterations` (50 000) sequential PING round trips after 20 warm-up pings, timed around the call | min/p50/p90/p95/p99/mean, µs |
//! | `burst`   | one client sends `--count` (10 000) messages of `--payload` (64) B, type 401; the server counts them | send rate; receive rate = messages / (last arrival − first send) |
//! | `stress`  | `--clients` (100) clients each send `--msgs` (100) messages of 32 B at once (threads/tasks started first, released together) | send-phase rate; receive rate, as for burst |
//!
//! Baselines, on the same sockets API as the driver (blocking `std::net`
//! for `--driver std`, tokio for `--driver tokio`), with `TCP_NODELAY`:
//! * latency: raw ping-pong of the same 15-byte PING/PONG frames;
//! * burst / stress: the same frames written with one `write_all` per
//!   message, counted by a reader per connection;
//! * memory: idle raw connections with one reader (thread or task) blocked on
//!   an 8 KiB buffer at each end.
//!
//! Rates use the time of the **last arrival** (Python's printed burst
//! receive rate polls every 50 ms instead; `bench/compare.py` recomputes
//! Python's figures the same way). Latency, burst and stress run `--warmup`
//! (1) discarded passes first, as Python does. Each memory figure is measured
//! in a fresh child process (`veltix bench --probe ...`), so memory freed by
//! other scenarios cannot hide growth.
//!
//! The output is a table, or with `--json` one JSON object: `"meta"` (driver,
//! parameters) and one object per scenario run, `{metric: number}`, with
//! stable keys (`p50_us`, `raw_p50_us`, `recv_msgs_per_s`, ...). A progress
//! bar is drawn on stderr when it is a terminal and the output is not JSON.

use std::io::IsTerminal;
use std::process::{Command, ExitCode};

use clap::{Args, ValueEnum};
use serde_json::{json, Map, Value};

use crate::exit::CliError;

mod common;
mod limit;
mod std_driver;
mod tokio_driver;

use common::{Flow, Latency, Params, Progress, Res};

/// Which benchmark scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Ping round-trip latency.
    Latency,
    /// Throughput of a burst of one-way messages from one client.
    Burst,
    /// Many clients sending at once.
    Stress,
    /// Memory per connected idle client.
    Memory,
    /// Every scenario, one after the other (memory, latency, burst, stress).
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

impl Driver {
    fn name(self) -> &'static str {
        match self {
            Driver::Std => "std",
            Driver::Tokio => "tokio",
        }
    }
}

/// One memory measurement, run in a child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Probe {
    /// Connected idle veltix clients.
    Veltix,
    /// Idle raw TCP connections.
    Raw,
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
    /// Latency: measured round trips (Python: --latency-iterations).
    #[arg(long, default_value_t = 50_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: u64,
    /// Burst: messages sent (Python: --burst-count).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Burst: payload bytes per message (Python: --burst-payload).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Stress: concurrent clients (Python: --stress-clients).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub clients: u64,
    /// Stress: messages per client (Python: --stress-msgs).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub msgs: u64,
    /// Memory: idle clients measured after the first 10 (Python: 40, its 10 -> 50 slope).
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle: u64,
    /// Discarded passes of latency, burst and stress before the measured one (Python: --warmup).
    #[arg(long, default_value_t = 1)]
    pub warmup: usize,
    /// Also run latency, burst and stress over TLS (a throwaway certificate),
    /// beside plaintext in the same run; reports TLS / plaintext.
    #[arg(long)]
    pub tls: bool,
    /// Internal: measure one memory figure in this process and print it as JSON.
    #[arg(long, value_enum, hide = true)]
    pub probe: Option<Probe>,
}

impl BenchArgs {
    fn params(&self) -> Params {
        Params {
            iterations: self.iterations as usize,
            count: self.count as usize,
            payload: self.payload,
            clients: self.clients as usize,
            msgs: self.msgs as usize,
            idle: self.idle as usize,
            warmup: self.warmup,
            tls: None,
        }
    }
}

/// What one driver offers the scenarios: each runs on veltix, or with
/// `raw` on plain TCP sockets of the same kind.
trait Bench {
    fn latency(&self, p: &Params, raw: bool) -> Res<Latency>;
    fn burst(&self, p: &Params, raw: bool) -> Res<Flow>;
    fn stress(&self, p: &Params, raw: bool) -> Res<Flow>;
    fn memory(&self, p: &Params, raw: bool) -> Res<f64>;
}

#[derive(Debug, Clone, Copy)]
enum Unit {
    Micros,
    PerSec,
    Bytes,
}

impl Unit {
    fn show(self, v: f64) -> String {
        match self {
            Unit::Micros => format!("{v:.1} µs"),
            Unit::PerSec => format!("{}/s", thousands(v)),
            Unit::Bytes => format!("{:.1} KiB", v / 1024.0),
        }
    }
}

/// `1234567.8` -> `1 234 568`.
fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(' ');
        }
        out.push(c);
    }
    if v < 0.0 {
        out.insert(0, '-');
    }
    out
}

/// One measured figure, its raw-TCP counterpart, and the machine's limit
/// (batched raw TCP, throughput only).
struct Metric {
    key: &'static str,
    label: &'static str,
    unit: Unit,
    value: f64,
    raw: Option<f64>,
    limit: Option<f64>,
}

/// A scenario's figures (table rows) and counts (JSON only).
struct Outcome {
    scenario: &'static str,
    metrics: Vec<Metric>,
    counts: Vec<(&'static str, f64)>,
    /// With `--tls`: each metric over TLS (`value`) beside plaintext (`raw`).
    tls: Vec<Metric>,
}

impl Outcome {
    fn json(&self) -> Value {
        let mut m = Map::new();
        for x in &self.metrics {
            m.insert(x.key.to_owned(), json!(x.value));
            if let Some(r) = x.raw {
                m.insert(format!("raw_{}", x.key), json!(r));
            }
            if let Some(l) = x.limit {
                m.insert(format!("limit_{}", x.key), json!(l));
            }
        }
        for (k, v) in &self.counts {
            m.insert((*k).to_owned(), json!(v));
        }
        for x in &self.tls {
            m.insert(format!("tls_{}", x.key), json!(x.value));
        }
        Value::Object(m)
    }
}

fn scenarios(s: Scenario) -> Vec<Scenario> {
    match s {
        // Python's order.
        Scenario::All => vec![
            Scenario::Memory,
            Scenario::Latency,
            Scenario::Burst,
            Scenario::Stress,
        ],
        s => vec![s],
    }
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::Latency => "latency",
        Scenario::Burst => "burst",
        Scenario::Stress => "stress",
        Scenario::Memory => "memory",
        Scenario::All => "all",
    }
}

/// Runs `f` for the warm-up passes (results dropped) and then for real,
/// on veltix and on raw TCP.
fn measured<T>(
    p: &Params,
    progress: &Progress,
    name: &str,
    f: impl Fn(bool) -> Res<T>,
) -> Res<(T, T)> {
    for i in 0..p.warmup {
        for raw in [false, true] {
            let what = if raw { "raw TCP" } else { "veltix" };
            progress.step(format!("{name}: warm-up {} ({what})", i + 1));
            f(raw).map_err(|e| format!("{name} warm-up ({what}): {e}"))?;
            progress.done();
        }
    }
    progress.step(format!("{name}: veltix"));
    let v = f(false).map_err(|e| format!("{name}: {e}"))?;
    progress.done();
    progress.step(format!("{name}: raw TCP"));
    let r = f(true).map_err(|e| format!("{name} (raw TCP): {e}"))?;
    progress.done();
    Ok((v, r))
}

fn latency_outcome(p: &Params, v: Latency, r: Latency) -> Outcome {
    let m = |key, label, f: fn(&Latency) -> f64| Metric {
        key,
        label,
        unit: Unit::Micros,
        value: f(&v),
        raw: Some(f(&r)),
        limit: None,
    };
    Outcome {
        scenario: "latency",
        metrics: vec![
            m("min_us", "ping min", |l| l.min),
            m("p50_us", "ping p50", |l| l.p50),
            m("p90_us", "ping p90", |l| l.p90),
            m("p95_us", "ping p95", |l| l.p95),
            m("p99_us", "ping p99", |l| l.p99),
            m("mean_us", "ping mean", |l| l.mean),
        ],
        counts: vec![("iterations", p.iterations as f64)],
        tls: Vec::new(),
    }
}

/// Runs the batched raw-TCP limit of a throughput scenario, warm-up first.
fn limit_flow(
    p: &Params,
    progress: &Progress,
    name: &str,
    f: fn(&Params) -> Res<Flow>,
) -> Res<Flow> {
    for _ in 0..p.warmup.min(1) {
        progress.step(format!("{name}: warm-up (limit)"));
        f(p).map_err(|e| format!("{name} warm-up (limit): {e}"))?;
        progress.done();
    }
    progress.step(format!("{name}: limit (batched raw TCP)"));
    let l = f(p).map_err(|e| format!("{name} (limit): {e}"))?;
    progress.done();
    Ok(l)
}

fn flow_outcome(
    scenario: &'static str,
    v: Flow,
    r: Flow,
    l: Flow,
    counts: Vec<(&'static str, f64)>,
) -> Outcome {
    let mut counts = counts;
    counts.push(("messages", v.messages as f64));
    counts.push(("recv_s", v.recv_secs()));
    counts.push(("raw_recv_s", r.recv_secs()));
    counts.push(("limit_recv_s", l.recv_secs()));
    Outcome {
        scenario,
        metrics: vec![
            Metric {
                key: "send_msgs_per_s",
                label: "send rate",
                unit: Unit::PerSec,
                value: v.send_rate(),
                raw: Some(r.send_rate()),
                limit: Some(l.send_rate()),
            },
            Metric {
                key: "recv_msgs_per_s",
                label: "receive rate (last arrival)",
                unit: Unit::PerSec,
                value: v.recv_rate(),
                raw: Some(r.recv_rate()),
                limit: Some(l.recv_rate()),
            },
        ],
        counts,
        tls: Vec::new(),
    }
}

/// Runs one memory probe in a fresh child process of this binary.
fn memory_probe(args: &BenchArgs, probe: &str) -> Res<f64> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
    let out = Command::new(exe)
        .args([
            "bench",
            "--driver",
            args.driver.name(),
            "--probe",
            probe,
            "--idle",
            &args.idle.to_string(),
        ])
        .output()
        .map_err(|e| format!("cannot start the memory probe: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "memory probe ({probe}) failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let v: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("memory probe ({probe}) printed no JSON: {e}"))?;
    v["per_client_bytes"]
        .as_f64()
        .ok_or_else(|| format!("memory probe ({probe}): no per_client_bytes in {v}"))
}

/// The TLS configs of a `--tls` run (made once per process).
fn bench_tls() -> Res<&'static common::BenchTls> {
    static TLS: std::sync::OnceLock<common::BenchTls> = std::sync::OnceLock::new();
    if let Some(t) = TLS.get() {
        return Ok(t);
    }
    let ss = crate::tls::SelfSigned::new().map_err(|e| e.message)?;
    let (server, client) = ss.configs().map_err(|e| e.message)?;
    Ok(TLS.get_or_init(|| common::BenchTls { server, client }))
}

/// Runs `f` over TLS: warm-up passes first, then the measured one.
fn over_tls<T>(
    p: &Params,
    progress: &Progress,
    name: &str,
    f: impl Fn(&Params) -> Res<T>,
) -> Res<T> {
    let p = Params {
        tls: Some(bench_tls()?),
        ..*p
    };
    for i in 0..p.warmup {
        progress.step(format!("{name}: warm-up {} (veltix over TLS)", i + 1));
        f(&p).map_err(|e| format!("{name} warm-up (TLS): {e}"))?;
        progress.done();
    }
    progress.step(format!("{name}: veltix over TLS"));
    let v = f(&p).map_err(|e| format!("{name} (TLS): {e}"))?;
    progress.done();
    Ok(v)
}

/// Each metric of `tls` (over TLS) beside the same of `plain`.
fn tls_beside(plain: &Outcome, tls: Outcome) -> Vec<Metric> {
    tls.metrics
        .into_iter()
        .zip(&plain.metrics)
        .map(|(t, p)| Metric {
            raw: Some(p.value),
            limit: None,
            ..t
        })
        .collect()
}

fn run_scenario(
    s: Scenario,
    args: &BenchArgs,
    bench: &dyn Bench,
    progress: &Progress,
) -> Res<Outcome> {
    let mut o = plain_scenario(s, args, bench, progress)?;
    if args.tls {
        let p = args.params();
        let tls = match s {
            Scenario::Latency => {
                let v = over_tls(&p, progress, "latency", |p| bench.latency(p, false))?;
                Some(latency_outcome(&p, v, v))
            }
            Scenario::Burst => {
                let v = over_tls(&p, progress, "burst", |p| bench.burst(p, false))?;
                Some(flow_outcome("burst", v, v, v, Vec::new()))
            }
            Scenario::Stress => {
                let v = over_tls(&p, progress, "stress", |p| bench.stress(p, false))?;
                Some(flow_outcome("stress", v, v, v, Vec::new()))
            }
            _ => None,
        };
        if let Some(t) = tls {
            o.tls = tls_beside(&o, t);
        }
    }
    Ok(o)
}

fn plain_scenario(
    s: Scenario,
    args: &BenchArgs,
    bench: &dyn Bench,
    progress: &Progress,
) -> Res<Outcome> {
    let p = args.params();
    Ok(match s {
        Scenario::Latency => {
            let (v, r) = measured(&p, progress, "latency", |raw| bench.latency(&p, raw))?;
            latency_outcome(&p, v, r)
        }
        Scenario::Burst => {
            let (v, r) = measured(&p, progress, "burst", |raw| bench.burst(&p, raw))?;
            let l = limit_flow(&p, progress, "burst", limit::burst)?;
            flow_outcome("burst", v, r, l, vec![("payload_bytes", p.payload as f64)])
        }
        Scenario::Stress => {
            let (v, r) = measured(&p, progress, "stress", |raw| bench.stress(&p, raw))?;
            let l = limit_flow(&p, progress, "stress", limit::stress)?;
            let mut o = flow_outcome(
                "stress",
                v,
                r,
                l,
                vec![
                    ("clients", p.clients as f64),
                    ("msgs_per_client", p.msgs as f64),
                    ("payload_bytes", common::STRESS_PAYLOAD as f64),
                ],
            );
            o.metrics[0].label = "send phase rate";
            o
        }
        Scenario::Memory => {
            progress.step("memory: veltix (child process)".into());
            let v = memory_probe(args, "veltix")?;
            progress.done();
            progress.step("memory: raw TCP (child process)".into());
            let r = memory_probe(args, "raw")?;
            progress.done();
            Outcome {
                scenario: "memory",
                metrics: vec![Metric {
                    key: "per_client_bytes",
                    label: "RSS per idle client (both ends)",
                    unit: Unit::Bytes,
                    value: v,
                    raw: Some(r),
                    limit: None,
                }],
                counts: vec![("clients", p.idle as f64)],
                tls: Vec::new(),
            }
        }
        Scenario::All => unreachable!("expanded by scenarios()"),
    })
}

fn steps(args: &BenchArgs, list: &[Scenario]) -> u64 {
    let tls = if args.tls { args.warmup as u64 + 1 } else { 0 };
    list.iter()
        .map(|s| match s {
            Scenario::Memory => 2,
            Scenario::Latency => 2 * (args.warmup as u64 + 1) + tls,
            _ => 2 * (args.warmup as u64 + 1) + 1 + args.warmup.min(1) as u64 + tls,
        })
        .sum()
}

fn print_table(args: &BenchArgs, outcomes: &[Outcome]) {
    let driver = format!("veltix-{}", args.driver.name());
    println!(
        "veltix bench: driver {driver}, {} CPUs; latency {} pings, burst {} x {} B, stress {} clients x {} x {} B, memory {} idle clients",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.iterations,
        args.count,
        args.payload,
        args.clients,
        args.msgs,
        common::STRESS_PAYLOAD,
        args.idle,
    );
    println!();
    println!(
        "{:<9} {:<30} {:>14} {:>14} {:>8} {:>14} {:>9}",
        "scenario", "metric", driver, "raw TCP", "vs raw", "limit", "vs limit"
    );
    let pair = |unit: Unit, value: f64, other: Option<f64>| match other {
        Some(r) if r != 0.0 => (unit.show(r), format!("{:.2}x", value / r)),
        Some(r) => (unit.show(r), "-".to_owned()),
        None => ("-".to_owned(), "-".to_owned()),
    };
    for o in outcomes {
        for m in &o.metrics {
            let (raw, ratio) = pair(m.unit, m.value, m.raw);
            let (limit, lratio) = pair(m.unit, m.value, m.limit);
            println!(
                "{:<9} {:<30} {:>14} {:>14} {:>8} {:>14} {:>9}",
                o.scenario,
                m.label,
                m.unit.show(m.value),
                raw,
                ratio,
                limit,
                lratio
            );
        }
    }
    println!();
    println!(
        "Rates count to the last arrival; \"vs raw\" is veltix / raw TCP with one write per frame,"
    );
    println!(
        "\"vs limit\" veltix / raw TCP with 64 KiB batched writes and a CRC-checking reader (the"
    );
    println!("machine's limit); latency and memory: lower is better.");
    if outcomes.iter().any(|o| !o.tls.is_empty()) {
        println!();
        println!("TLS ({}, same run):", tls_suite());
        println!(
            "{:<9} {:<30} {:>14} {:>14} {:>10}",
            "scenario", "metric", "plaintext", "TLS", "TLS cost"
        );
        for o in outcomes {
            for m in &o.tls {
                let plain = m.raw.unwrap_or(0.0);
                // Cost: how many times worse TLS is (rates: plain / TLS;
                // latencies: TLS / plain).
                let cost = match m.unit {
                    Unit::PerSec if m.value > 0.0 => format!("{:.2}x", plain / m.value),
                    Unit::Micros | Unit::Bytes if plain > 0.0 => {
                        format!("{:.2}x", m.value / plain)
                    }
                    _ => "-".to_owned(),
                };
                println!(
                    "{:<9} {:<30} {:>14} {:>14} {:>10}",
                    o.scenario,
                    m.label,
                    m.unit.show(plain),
                    m.unit.show(m.value),
                    cost
                );
            }
        }
    }
}

/// What a `--tls` run negotiates (the provider's defaults): for the table.
fn tls_suite() -> String {
    let p = veltix_tls::provider();
    let suite = p
        .cipher_suites
        .first()
        .map_or_else(|| "?".to_owned(), |s| format!("{:?}", s.suite()));
    format!("TLS 1.3, preferred suite {suite}, rustls")
}

fn run_probe(args: &BenchArgs, probe: Probe) -> Res<Value> {
    let bench = driver(args.driver)?;
    let v = bench.memory(&args.params(), probe == Probe::Raw)?;
    Ok(json!({ "per_client_bytes": v }))
}

fn driver(d: Driver) -> Res<Box<dyn Bench>> {
    Ok(match d {
        Driver::Std => Box::new(std_driver::Std),
        Driver::Tokio => Box::new(tokio_driver::Tokio::new()?),
    })
}

/// Runs the benchmark: 0 on success, 1 when a scenario failed.
pub fn run(args: &BenchArgs) -> ExitCode {
    tracing::debug!(?args, "bench requested");
    if let Some(probe) = args.probe {
        return match run_probe(args, probe) {
            Ok(v) => {
                println!("{v}");
                ExitCode::SUCCESS
            }
            Err(e) => CliError::failure(format!("bench: {e}")).report(),
        };
    }
    let list = scenarios(args.scenario);
    let progress = Progress::new(
        steps(args, &list),
        !args.json && std::io::stderr().is_terminal(),
    );
    let result = driver(args.driver).and_then(|bench| {
        list.iter()
            .map(|&s| run_scenario(s, args, bench.as_ref(), &progress))
            .collect::<Res<Vec<Outcome>>>()
    });
    progress.finish();
    let outcomes = match result {
        Ok(o) => o,
        Err(e) => return CliError::failure(format!("bench: {e}")).report(),
    };
    if args.json {
        let mut doc = Map::new();
        doc.insert(
            "meta".into(),
            json!({
                "driver": args.driver.name(),
                "veltix_rs": env!("CARGO_PKG_VERSION"),
                "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
                "scenarios": list.iter().map(|&s| scenario_name(s)).collect::<Vec<_>>(),
                "iterations": args.iterations,
                "count": args.count,
                "payload": args.payload,
                "clients": args.clients,
                "msgs": args.msgs,
                "stress_payload": common::STRESS_PAYLOAD,
                "idle": args.idle,
                "warmup": args.warmup,
                "tls": args.tls,
            }),
        );
        for o in &outcomes {
            doc.insert(o.scenario.to_owned(), o.json());
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&Value::Object(doc)).expect("serializable")
        );
    } else {
        print_table(args, &outcomes);
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(1_234_567.8), "1 234 568");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(-1000.0), "-1 000");
    }

    #[test]
    fn all_runs_pythons_order() {
        let names: Vec<_> = scenarios(Scenario::All)
            .into_iter()
            .map(scenario_name)
            .collect();
        assert_eq!(names, ["memory", "latency", "burst", "stress"]);
    }
}
