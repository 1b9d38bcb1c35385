//! Shared helpers for the cross-crate tests: finding the Python peer,
//! running its scripts, and inspecting the process's threads and sockets.

#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Python interpreter that has `veltix==3.3.0` installed: `$VELTIX_PYTHON`,
/// else `.venv/bin/python` at the workspace root (made by `scripts/test.sh`).
///
/// When none is found: under CI (`CI` set) this panics, so interop can never
/// be skipped there; locally it prints a loud warning and returns `None`.
pub fn python() -> Option<PathBuf> {
    let candidate = std::env::var_os("VELTIX_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".venv/bin/python"));
    let ok = Command::new(&candidate)
        .args([
            "-c",
            "import veltix, sys; sys.exit(0 if veltix.__version__ == '3.3.0' else 3)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(candidate);
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "Python veltix 3.3.0 not found at {} (CI must run scripts/test.sh, which installs it)",
            candidate.display()
        );
    }
    eprintln!(
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPING Python interop: no veltix 3.3.0 at {}\n\
         !!! run ./scripts/test.sh (it creates .venv) or set VELTIX_PYTHON\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
        candidate.display()
    );
    None
}

/// Path of a peer script in `tests/python/`.
pub fn script(name: &str) -> PathBuf {
    workspace_root().join("tests/python").join(name)
}

/// Starts a Python script with arguments, stdout piped, stderr inherited.
pub fn spawn_python(python: &Path, name: &str, args: &[&str]) -> Child {
    Command::new(python)
        .arg(script(name))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"))
}

/// Number of threads of this process (Linux: `/proc/self/status`).
pub fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Number of open sockets of this process (Linux: `/proc/self/fd`).
pub fn socket_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| {
                    std::fs::read_link(e.path())
                        .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"))
                })
                .count()
        })
        .unwrap_or(0)
}
