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
    // Written to the process's stderr directly: the test harness captures
    // `eprintln!` of passing tests, and this warning must always be seen.
    let _ = std::io::Write::write_all(
        &mut std::io::stderr(),
        format!(
            "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPING Python interop: no veltix 3.3.0 at {}\n\
         !!! run ./scripts/test.sh (it creates .venv) or set VELTIX_PYTHON\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n",
            candidate.display()
        )
        .as_bytes(),
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

/// A running Python peer script with stdin and stdout piped (stderr
/// inherited). Its stdout is read line by line on a thread; every line must be
/// one JSON object. The process is killed and reaped on drop, so a failing
/// test never leaves it behind. Closing stdin ([`close_stdin`](Self::close_stdin))
/// is how a test tells a long-running script to finish.
pub struct PyPeer {
    name: String,
    child: Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    /// Every JSON line read so far, in order.
    pub seen: Vec<serde_json::Value>,
}

impl std::fmt::Debug for PyPeer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PyPeer")
            .field("name", &self.name)
            .field("pid", &self.child.id())
            .finish()
    }
}

impl PyPeer {
    /// Starts `tests/python/<name>` with `args`.
    pub fn spawn(python: &Path, name: &str, args: &[&str]) -> PyPeer {
        let mut child = Command::new(python)
            .arg(script(name))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("stdout is piped");
        let stdin = child.stdin.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name(format!("py-stdout-{name}"))
            .spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .expect("spawn stdout reader");
        PyPeer {
            name: format!("{name} {}", args.join(" ")),
            child,
            stdin,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// The next JSON line, or `None` at end of stdout. Panics after `timeout`
    /// or on a line that is not JSON.
    pub fn next_json(&mut self, timeout: std::time::Duration) -> Option<serde_json::Value> {
        use std::sync::mpsc::RecvTimeoutError;
        match self.lines.recv_timeout(timeout) {
            Ok(line) => {
                let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
                    panic!("{}: stdout line is not JSON ({e}): {line:?}", self.name)
                });
                self.seen.push(v.clone());
                Some(v)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => panic!(
                "{}: no output within {timeout:?}; seen so far: {:?}",
                self.name,
                self.short_seen()
            ),
        }
    }

    /// Reads lines until one has `"event": event` and returns it (the lines
    /// skipped stay in [`seen`](Self::seen)). Panics on timeout or end of output.
    pub fn expect_event(&mut self, event: &str, timeout: std::time::Duration) -> serde_json::Value {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.next_json(left) {
                Some(v) if v["event"] == event => return v,
                Some(_) => {}
                None => panic!(
                    "{}: output ended before event {event:?}; seen: {:?}; exit: {:?}",
                    self.name,
                    self.short_seen(),
                    self.child.try_wait()
                ),
            }
        }
    }

    /// Closes the script's stdin (scripts that wait for it then finish).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// Closes stdin, reads the rest of stdout and waits for the exit; panics
    /// if that takes longer than `timeout`. Returns the exit status.
    pub fn finish(&mut self, timeout: std::time::Duration) -> std::process::ExitStatus {
        self.close_stdin();
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                panic!("{}: did not exit within {timeout:?}", self.name);
            }
            if self.next_json(left).is_none() {
                break;
            }
        }
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            if std::time::Instant::now() >= deadline {
                panic!("{}: did not exit within {timeout:?}", self.name);
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    /// [`finish`](Self::finish) and assert a zero exit status.
    pub fn finish_ok(&mut self, timeout: std::time::Duration) {
        let status = self.finish(timeout);
        assert!(
            status.success(),
            "{} exited with {status}; output: {:?}",
            self.name,
            self.short_seen()
        );
    }

    /// Every line seen so far with event `event`.
    pub fn events(&self, event: &str) -> Vec<serde_json::Value> {
        self.seen
            .iter()
            .filter(|v| v["event"] == event)
            .cloned()
            .collect()
    }

    /// The lines seen so far, long strings cut, for panic messages.
    fn short_seen(&self) -> Vec<String> {
        self.seen
            .iter()
            .map(|v| {
                let s = v.to_string();
                if s.chars().count() > 300 {
                    format!("{}...", s.chars().take(300).collect::<String>())
                } else {
                    s
                }
            })
            .collect()
    }
}

impl Drop for PyPeer {
    fn drop(&mut self) {
        self.stdin = None;
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}
