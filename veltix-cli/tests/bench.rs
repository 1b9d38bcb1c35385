//! End-to-end tests of `veltix bench`: small runs of every scenario on both
//! drivers exit 0 and print one JSON document with the documented keys and
//! positive figures (the figures themselves are not checked: this machine's
//! load decides them); the default output is a table; nothing but JSON goes
//! to stdout with `--json`, and no progress bar is drawn on a non-terminal.

use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_veltix");
const DRIVERS: [&str; 2] = ["std", "tokio"];

fn bench(args: &[&str]) -> Output {
    let out = Command::new(BIN)
        .arg("bench")
        .args(args)
        .output()
        .expect("run veltix bench");
    assert!(
        out.status.success(),
        "veltix bench {args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `veltix bench ARGS --json` and returns the document (stderr must be empty).
fn bench_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = bench(&all);
    assert!(
        out.stderr.is_empty(),
        "stderr should stay empty with --json (no progress bar): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn positive(doc: &Value, scenario: &str, keys: &[&str]) {
    let s = doc
        .get(scenario)
        .unwrap_or_else(|| panic!("no {scenario:?} in {doc}"));
    for k in keys {
        for key in [k.to_string(), format!("raw_{k}")] {
            let v = s[&key]
                .as_f64()
                .unwrap_or_else(|| panic!("{scenario}.{key} missing or not a number in {s}"));
            assert!(v > 0.0 && v.is_finite(), "{scenario}.{key} = {v}");
        }
    }
}

fn meta_driver(doc: &Value) -> &str {
    doc["meta"]["driver"].as_str().expect("meta.driver")
}

#[test]
fn latency_reports_percentiles_for_both_drivers() {
    for driver in DRIVERS {
        let doc = bench_json(&[
            "--scenario",
            "latency",
            "--iterations",
            "200",
            "--driver",
            driver,
        ]);
        assert_eq!(meta_driver(&doc), driver);
        positive(
            &doc,
            "latency",
            &["min_us", "p50_us", "p90_us", "p95_us", "p99_us", "mean_us"],
        );
        let l = &doc["latency"];
        assert_eq!(l["iterations"], 200.0);
        let at = |k: &str| l[k].as_f64().unwrap();
        assert!(at("min_us") <= at("p50_us") && at("p50_us") <= at("p99_us"));
        assert!(doc.get("burst").is_none(), "only the chosen scenario runs");
    }
}

#[test]
fn burst_and_stress_report_rates_for_both_drivers() {
    for driver in DRIVERS {
        let doc = bench_json(&[
            "--scenario",
            "burst",
            "--count",
            "500",
            "--warmup",
            "0",
            "--driver",
            driver,
        ]);
        positive(
            &doc,
            "burst",
            &["send_msgs_per_s", "recv_msgs_per_s", "recv_s"],
        );
        assert_eq!(doc["burst"]["messages"], 500.0);
        assert_eq!(doc["burst"]["payload_bytes"], 64.0);

        let doc = bench_json(&[
            "--scenario",
            "stress",
            "--clients",
            "5",
            "--msgs",
            "20",
            "--warmup",
            "0",
            "--driver",
            driver,
        ]);
        positive(
            &doc,
            "stress",
            &["send_msgs_per_s", "recv_msgs_per_s", "recv_s"],
        );
        assert_eq!(doc["stress"]["messages"], 100.0);
        assert_eq!(doc["stress"]["clients"], 5.0);
    }
}

#[test]
fn memory_is_measured_in_child_processes() {
    let doc = bench_json(&["--scenario", "memory", "--idle", "5", "--driver", "tokio"]);
    let m = &doc["memory"];
    for k in ["per_client_bytes", "raw_per_client_bytes"] {
        // A delta of resident pages over 5 clients can be 0: only its presence is checked.
        assert!(m[k].as_f64().is_some_and(f64::is_finite), "{k} in {m}");
    }
    assert_eq!(m["clients"], 5.0);
}

#[test]
fn default_output_is_a_table() {
    let out = bench(&[
        "--scenario",
        "latency",
        "--iterations",
        "50",
        "--warmup",
        "0",
    ]);
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.contains("veltix-std"), "{text}");
    for row in ["ping p50", "ping p99", "raw TCP"] {
        assert!(text.contains(row), "no {row:?} in:\n{text}");
    }
    assert!(out.stderr.is_empty(), "no progress bar on a pipe");
}

#[test]
fn zero_counts_are_usage_errors() {
    let out = Command::new(BIN)
        .args(["bench", "--count", "0"])
        .output()
        .expect("run veltix bench");
    assert_eq!(out.status.code(), Some(2));
}
