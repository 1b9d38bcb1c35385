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

/// The named test payloads ("specs") that `tests/python/peer_common.py`
/// builds identically, and byte-level assertion helpers. Used by the tokio
/// interop and std ⇄ tokio tests (`interop_std.rs` keeps its own copy).
pub mod specs {
    use serde_json::{json, Value};
    use veltix_proto::{payload, Frame, MessageType};

    /// Type 200 on every side: echoed as is.
    pub const ECHO: MessageType = MessageType::new(200);
    /// Type 201 on every side: a JSON payload, answered re-encoded.
    pub const JSON: MessageType = MessageType::new(201);

    /// Every payload kind, in the order the echo tests send them.
    pub const SPECS: [&str; 6] = ["empty", "text", "bin256", "frame", "mib", "json"];

    /// The object `peer_common.JSON_OBJ` holds (keys sorted at every level, so
    /// serde_json's sorted map re-encodes it in Python's insertion order).
    pub fn json_obj() -> Value {
        json!({
            "ascii": "hello",
            "empty_list": [],
            "empty_obj": {},
            "escapes": "quote\" backslash\\ slash/ nl\n tab\t nul\u{0} us\u{1f} del\u{7f}",
            "floats": [0.1, -2.5, 1.0, -0.0, std::f64::consts::PI],
            "ints": [0, -1, 9007199254740993u64, i64::MIN],
            "nested": {"a": [1, {"b": null}], "f": false, "t": true},
            "unicode": "caf\u{e9} \u{2713} \u{1F600} \u{20ac} \u{ff}",
        })
    }

    /// The bytes of a payload spec (see `tests/python/peer_common.py`).
    pub fn payload_of(spec: &str) -> Vec<u8> {
        match spec {
            "empty" => Vec::new(),
            "text" => "hello, veltix \u{2713} caf\u{e9}".as_bytes().to_vec(),
            "bin256" => (0..=255u8).collect(),
            "frame" => unhex("56580000c8000000053610a686000168656c6c6f"),
            "mib" => (0..1usize << 20)
                .map(|i| ((i * 7 + i / 256) & 0xff) as u8)
                .collect(),
            "json" => payload::json(&json_obj())
                .expect("JSON_OBJ encodes")
                .to_vec(),
            s => unhex(s.strip_prefix("hex:").expect("unknown payload spec")),
        }
    }

    /// The message type a spec travels with.
    pub fn type_of(spec: &str) -> MessageType {
        if spec == "json" {
            JSON
        } else {
            ECHO
        }
    }

    /// Lowercase hex of `b`.
    pub fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Bytes of a hex string; panics on bad input.
    pub fn unhex(s: &str) -> Vec<u8> {
        assert!(s.len() % 2 == 0, "odd hex length");
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// The `"hex"` field a peer printed, decoded.
    pub fn hex_field(v: &Value) -> Vec<u8> {
        unhex(v["hex"].as_str().unwrap_or_else(|| panic!("no hex in {v}")))
    }

    /// What an echo peer answers: the same bytes, or for [`JSON`] the decoded
    /// value re-encoded with `payload::json` (Python's `json.dumps` layout).
    pub fn echo_answer(msg: &Frame) -> bytes::Bytes {
        if msg.message_type == JSON {
            payload::json(&msg.json::<Value>().expect("JSON payload")).expect("re-encodes")
        } else {
            msg.payload.clone()
        }
    }

    /// Asserts two payloads are equal without printing megabytes on failure.
    #[track_caller]
    pub fn assert_bytes(got: &[u8], want: &[u8], what: &str) {
        if got != want {
            let at = got.iter().zip(want).position(|(a, b)| a != b);
            panic!(
                "{what}: {} bytes received, {} expected; first difference at {at:?}; \
                 got starts {}, want starts {}",
                got.len(),
                want.len(),
                hex(&got[..got.len().min(64)]),
                hex(&want[..want.len().min(64)]),
            );
        }
    }
}

/// Async Rust peers for the tokio tests: a [`veltix_tokio::Server`] driven by
/// an event loop task that echoes and records, and a responder loop for a
/// [`veltix_tokio::Client`].
pub mod tokio_peers {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::sync::{mpsc, oneshot};
    use tokio::task::JoinHandle;
    use veltix_tokio::{
        Client, ClientEvent, Frame, MessageType, Peer, PeerHello, Server, ServerConfig, ServerEvent,
    };

    use crate::specs::{echo_answer, ECHO, JSON};

    /// Runs blocking work (a `veltix_std` call, a [`PyPeer`](crate::PyPeer)
    /// wait) on tokio's blocking pool, never on a runtime worker; a panic in
    /// it is re-raised in the caller.
    pub async fn off<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
        match tokio::task::spawn_blocking(f).await {
            Ok(r) => r,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// One message a Rust peer received.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Got {
        /// The sender's id on a server (`Peer::id`/`ClientInfo::id`), 0 on a client.
        pub peer: u64,
        /// Its type.
        pub message_type: MessageType,
        /// Its request id.
        pub request_id: u16,
        /// Its payload.
        pub payload: Vec<u8>,
    }

    impl Got {
        /// Records `f` as received from `peer`.
        pub fn of(peer: u64, f: &Frame) -> Got {
            Got {
                peer,
                message_type: f.message_type,
                request_id: f.request_id,
                payload: f.payload.to_vec(),
            }
        }
    }

    /// Connection counters kept by the event loop, in event order.
    #[derive(Debug, Default)]
    pub struct Counts {
        /// `Connected` events.
        pub connects: AtomicUsize,
        /// `Disconnected` events.
        pub disconnects: AtomicUsize,
        /// Connected now.
        pub current: AtomicUsize,
        /// Most connected at once.
        pub peak: AtomicUsize,
    }

    /// A [`Server`] whose event loop task records every `Message` event and
    /// answers [`ECHO`] and [`JSON`] ones with [`echo_answer`] and the same id
    /// (other types are only recorded). `Connected` peers are handed out by
    /// [`next_client`](Self::next_client).
    pub struct TokioEcho {
        /// The server (clone it freely).
        pub server: Server,
        /// Its port.
        pub port: u16,
        /// Counters.
        pub counts: Arc<Counts>,
        got: Arc<Mutex<Vec<Got>>>,
        reply_errors: Arc<Mutex<Vec<String>>>,
        connected: mpsc::UnboundedReceiver<Peer>,
        stop: Option<oneshot::Sender<()>>,
        events: Option<JoinHandle<()>>,
    }

    impl TokioEcho {
        /// Binds `config` and starts the event loop.
        pub async fn start(config: ServerConfig) -> TokioEcho {
            let server = Server::new(config).expect("config");
            server.start().await.expect("bind");
            let port = server.local_addr().expect("running").port();
            let counts = Arc::new(Counts::default());
            let got = Arc::new(Mutex::new(Vec::new()));
            let reply_errors = Arc::new(Mutex::new(Vec::new()));
            let (tx, connected) = mpsc::unbounded_channel();
            let (stop, mut stopped) = oneshot::channel::<()>();
            let events = {
                let (s, counts, got, errors) = (
                    server.clone(),
                    counts.clone(),
                    got.clone(),
                    reply_errors.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        // The stop signal: a `recv` pending at shutdown with
                        // no peer left never returns (see std_tokio.rs).
                        let ev = tokio::select! {
                            ev = s.recv() => ev,
                            _ = &mut stopped => None,
                        };
                        let Some(ev) = ev else { break };
                        match ev {
                            ServerEvent::Connected(p) => {
                                counts.connects.fetch_add(1, Ordering::SeqCst);
                                let now = counts.current.fetch_add(1, Ordering::SeqCst) + 1;
                                counts.peak.fetch_max(now, Ordering::SeqCst);
                                let _ = tx.send(p);
                            }
                            ServerEvent::Message(p, msg) => {
                                got.lock().unwrap().push(Got::of(p.id(), &msg));
                                if msg.message_type == ECHO || msg.message_type == JSON {
                                    let answer = echo_answer(&msg);
                                    if let Err(e) = s.reply(&p, &msg, msg.message_type, answer) {
                                        errors.lock().unwrap().push(format!(
                                            "reply to peer {} id {}: {e}",
                                            p.id(),
                                            msg.request_id
                                        ));
                                    }
                                }
                            }
                            ServerEvent::Disconnected(..) => {
                                counts.current.fetch_sub(1, Ordering::SeqCst);
                                counts.disconnects.fetch_add(1, Ordering::SeqCst);
                            }
                            _ => {}
                        }
                    }
                })
            };
            TokioEcho {
                server,
                port,
                counts,
                got,
                reply_errors,
                connected,
                stop: Some(stop),
                events: Some(events),
            }
        }

        /// The port as a command-line argument.
        pub fn port_arg(&self) -> String {
            self.port.to_string()
        }

        /// Everything received so far, in arrival order.
        pub fn got(&self) -> Vec<Got> {
            self.got.lock().unwrap().clone()
        }

        /// Replies that could not be queued (the peer had gone).
        pub fn reply_errors(&self) -> Vec<String> {
            self.reply_errors.lock().unwrap().clone()
        }

        /// The next peer that finished its handshake; panics after `timeout`.
        pub async fn next_client(&mut self, timeout: Duration) -> Peer {
            tokio::time::timeout(timeout, self.connected.recv())
                .await
                .expect("no client connected to the tokio server")
                .expect("event loop ended")
        }

        /// Polls until `cond` holds; panics after `timeout`.
        pub async fn wait_until(
            &self,
            what: &str,
            timeout: Duration,
            mut cond: impl FnMut(&Self) -> bool,
        ) {
            let deadline = tokio::time::Instant::now() + timeout;
            while !cond(self) {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "timed out waiting until {what}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }

        /// `shutdown` (1 s flush deadline), then ends the event loop.
        pub async fn stop(mut self) {
            self.server.shutdown(Duration::from_secs(1)).await;
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(h) = self.events.take() {
                h.await.expect("event loop panicked");
            }
        }
    }

    impl Drop for TokioEcho {
        fn drop(&mut self) {
            if let Some(h) = self.events.take() {
                h.abort();
            }
        }
    }

    /// A task answering a [`Client`]'s `Message` events: [`ECHO`]/[`JSON`]
    /// with [`echo_answer`] and the same id; every message is recorded (peer 0),
    /// and so are `Connected` hellos.
    pub struct Responder {
        got: Arc<Mutex<Vec<Got>>>,
        hellos: Arc<Mutex<Vec<PeerHello>>>,
        stop: Option<oneshot::Sender<()>>,
        task: Option<JoinHandle<()>>,
    }

    impl Responder {
        /// Starts answering for `client`.
        pub fn start(client: &Client) -> Responder {
            let got = Arc::new(Mutex::new(Vec::new()));
            let hellos = Arc::new(Mutex::new(Vec::new()));
            let (stop, mut stopped) = oneshot::channel::<()>();
            let (c, g, h) = (client.clone(), got.clone(), hellos.clone());
            let task = tokio::spawn(async move {
                loop {
                    // A pending `recv` may never return once the server
                    // closed (see std_tokio.rs): stop on a signal too.
                    let ev = tokio::select! {
                        ev = c.recv() => ev,
                        _ = &mut stopped => None,
                    };
                    match ev {
                        None => break,
                        Some(ClientEvent::Connected(hello)) => h.lock().unwrap().push(hello),
                        Some(ClientEvent::Message(msg)) => {
                            g.lock().unwrap().push(Got::of(0, &msg));
                            if msg.message_type == ECHO || msg.message_type == JSON {
                                let _ = c.reply(&msg, msg.message_type, echo_answer(&msg));
                            }
                        }
                        Some(_) => {}
                    }
                }
            });
            Responder {
                got,
                hellos,
                stop: Some(stop),
                task: Some(task),
            }
        }

        /// Everything received so far, in order.
        pub fn got(&self) -> Vec<Got> {
            self.got.lock().unwrap().clone()
        }

        /// The hellos of `Connected` events seen so far.
        pub fn hellos(&self) -> Vec<PeerHello> {
            self.hellos.lock().unwrap().clone()
        }

        /// Ends the task.
        pub async fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(t) = self.task.take() {
                t.await.expect("responder panicked");
            }
        }
    }

    impl Drop for Responder {
        fn drop(&mut self) {
            if let Some(t) = self.task.take() {
                t.abort();
            }
        }
    }
}

pub mod drivers;
pub mod harness;
pub mod pki;
pub mod raw;

/// `config` with negotiation on: a capability offered and authentication
/// offered (not required), as a veltix-rs server would run next to Python
/// clients. Python veltix 3.3.0 ignores `meta.caps`, so every interop test
/// must pass unchanged with it.
pub fn negotiating_server(config: veltix_proto::ServerConfig) -> veltix_proto::ServerConfig {
    use veltix_proto::auth::{MemoryStore, ScramCredential, ServerAuth};
    let users = MemoryStore::new();
    users.insert_user(
        "interop",
        ScramCredential::derive("interop", b"interop-salt-16b", 4096),
    );
    config
        .capabilities(vec![veltix_proto::Capability::new("interop.test", 1..=2)])
        .auth(Some(ServerAuth::new(users).required(false)))
}

/// `config` with negotiation on: a capability wanted and SCRAM credentials
/// that a plain (Python) server never asks for.
pub fn negotiating_client(config: veltix_proto::ClientConfig) -> veltix_proto::ClientConfig {
    config
        .capabilities(vec![veltix_proto::Capability::new("interop.test", 1..=2)])
        .auth(Some(veltix_proto::ClientAuth::scram("interop", "interop")))
}
