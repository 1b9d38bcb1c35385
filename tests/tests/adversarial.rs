//! The adversarial suite (`tests/adversarial/attack.py`) run from `cargo test`:
//! `--driver std`, then `--driver tokio`, each in `--quick` mode (set
//! `VELTIX_ADVERSARIAL_FULL=1` for the full durations), within a total time
//! budget (`VELTIX_ADVERSARIAL_BUDGET_SECS`, default 600). Each run must exit 0.
//! `VELTIX_ADVERSARIAL_ONLY=name[,name]` runs only those attacks.
//!
//! This test builds nothing. It needs the `veltix` binary, found as:
//!
//! 1. `$VELTIX_BIN` when set (e.g. `target/release/veltix` for release figures);
//! 2. else `veltix` next to this test's own profile directory: the test runs
//!    as `<target>/<profile>/deps/adversarial-<hash>`, so the binary of the
//!    same target dir (`CARGO_TARGET_DIR` honoured for free) and profile is
//!    `<target>/<profile>/veltix`. `cargo test --workspace` builds it, because
//!    `veltix-cli`'s own integration tests need the binary; when running this
//!    crate alone, run `cargo build -p veltix-cli` first (same profile).
//!
//! A missing binary or `python3` fails under CI (`CI` set) and is skipped
//! with a loud warning elsewhere. A binary older than the sources gets a
//! warning (it may be stale).

#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The workspace root (this file needs nothing from the `veltix-tests` library).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Fails under CI, else prints a warning that the harness cannot swallow.
fn skip_or_fail(why: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("adversarial suite cannot run under CI: {why}");
    }
    let bar = "!".repeat(72);
    let _ = std::io::stderr().write_all(
        format!("\n{bar}\n!!! SKIPPING the adversarial suite: {why}\n{bar}\n").as_bytes(),
    );
}

fn find_binary() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("VELTIX_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("VELTIX_BIN={} does not exist", p.display()))
        };
    }
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // <target>/<profile>/deps/<test> -> <target>/<profile>/veltix
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("unexpected test executable path")?;
    let bin = profile_dir.join(format!("veltix{}", std::env::consts::EXE_SUFFIX));
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "no veltix binary at {} (run `cargo build -p veltix-cli` with the same profile, \
             or set VELTIX_BIN)",
            bin.display()
        ))
    }
}

/// Newest modification time of the `.rs` files under `dir`.
fn newest_source(dir: &Path) -> Option<SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let t = if path.is_dir() {
            newest_source(&path)
        } else if path.extension().is_some_and(|e| e == "rs") {
            entry.metadata().and_then(|m| m.modified()).ok()
        } else {
            None
        };
        newest = newest.max(t);
    }
    newest
}

fn warn_if_stale(bin: &Path) {
    let Ok(built) = bin.metadata().and_then(|m| m.modified()) else {
        return;
    };
    let root = workspace_root();
    let src = ["veltix-cli", "veltix-std", "veltix-tokio", "veltix-proto"]
        .iter()
        .filter_map(|c| newest_source(&root.join(c).join("src")))
        .max();
    if src.is_some_and(|s| s > built) {
        let _ = std::io::stderr().write_all(
            format!(
                "\n!!! WARNING: {} is older than the sources; rebuild it (cargo build -p veltix-cli)\n",
                bin.display()
            )
            .as_bytes(),
        );
    }
}

/// Runs attack.py for one driver; returns (exit code, output) or panics on timeout.
fn run_suite(bin: &Path, driver: &str, budget: Duration) -> (Option<i32>, String) {
    let script = workspace_root().join("tests/adversarial/attack.py");
    let mut cmd = Command::new("python3");
    cmd.arg(&script)
        .arg("--binary")
        .arg(bin)
        .args(["--driver", driver])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if std::env::var_os("VELTIX_ADVERSARIAL_FULL").is_none() {
        cmd.arg("--quick");
    }
    if let Some(only) = std::env::var_os("VELTIX_ADVERSARIAL_ONLY") {
        cmd.arg("--only").arg(only);
    }
    let mut child = cmd.spawn().expect("spawn python3 attack.py");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        let _ = stdout.read_to_string(&mut out);
        out
    });
    let deadline = Instant::now() + budget;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for attack.py") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = reader.join().unwrap_or_default();
            panic!("attack.py --driver {driver} exceeded the time budget ({budget:?}); output so far:\n{out}");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = reader.join().unwrap_or_default();
    // Straight to stderr: the harness captures eprintln! of passing tests, and
    // these figures are worth seeing every time.
    let _ = std::io::stderr().write_all(out.as_bytes());
    (status.code(), out)
}

#[test]
fn adversarial_suite_std_and_tokio() {
    let python_ok = Command::new("python3")
        .args([
            "-c",
            "import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !python_ok {
        skip_or_fail("python3 (>= 3.9) not found");
        return;
    }
    let bin = match find_binary() {
        Ok(b) => b,
        Err(why) => {
            skip_or_fail(&why);
            return;
        }
    };
    warn_if_stale(&bin);
    let budget = Duration::from_secs(
        std::env::var("VELTIX_ADVERSARIAL_BUDGET_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    );
    let start = Instant::now();
    let mut failures = Vec::new();
    for driver in ["std", "tokio"] {
        let left = budget.saturating_sub(start.elapsed());
        let (code, out) = run_suite(&bin, driver, left);
        if code != Some(0) {
            let failed: Vec<&str> = out.lines().filter(|l| l.contains(" FAIL ")).collect();
            failures.push(format!(
                "--driver {driver}: exit {code:?}\n{}",
                failed.join("\n")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "adversarial suite failed ({} on {}):\n{}",
        "attack.py",
        bin.display(),
        failures.join("\n")
    );
}
