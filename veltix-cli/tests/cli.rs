//! End-to-end tests of the `veltix` binary: `demo`, `serve` driven by
//! `request`/`ping`/`send`, the documented exit codes (refused, rejected,
//! timeout, usage), and interop with the Python `veltix` 3.3.0 package in
//! both directions (`tests/python/` peer scripts).
//!
//! Every child process lives in a [`Proc`] guard that kills and reaps it on
//! drop, so a failing assertion never leaves a server behind.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_veltix");
/// Upper bound for anything a test waits for.
const WAIT: Duration = Duration::from_secs(20);

/// A running child process with piped stdio; stdout arrives line by line on
/// a channel, stderr is collected. Killed and reaped on drop.
struct Proc {
    name: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    /// Every stdout line read so far.
    seen: Vec<String>,
}

impl Proc {
    fn spawn(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Proc {
        let name = format!(
            "{} {}",
            Path::new(program.as_ref()).display(),
            args.join(" ")
        );
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut err = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let collected = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                collected
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Proc {
            name,
            stdin: child.stdin.take(),
            child,
            lines,
            stderr,
            seen: Vec::new(),
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The next stdout line (panics after [`WAIT`]).
    fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(WAIT) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(_) => panic!(
                "{}: no more output\nstdout so far:\n{}\nstderr:\n{}",
                self.name,
                self.seen.join("\n"),
                self.stderr()
            ),
        }
    }

    /// Reads stdout until a line satisfies `pred`; returns it.
    fn wait_for(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(50)) {
                self.seen.push(line.clone());
                if pred(&line) {
                    return line;
                }
            }
        }
        panic!(
            "{}: never printed {what}\nstdout:\n{}\nstderr:\n{}",
            self.name,
            self.seen.join("\n"),
            self.stderr()
        );
    }

    /// Closes stdin, waits for the exit and returns the status and the rest of stdout.
    fn finish(&mut self) -> (ExitStatus, Vec<String>) {
        drop(self.stdin.take());
        let status = wait_timeout(&mut self.child, WAIT)
            .unwrap_or_else(|| panic!("{}: did not exit after stdin closed", self.name));
        let rest: Vec<String> = std::iter::from_fn(|| self.lines.recv_timeout(WAIT).ok()).collect();
        self.seen.extend(rest.iter().cloned());
        (status, rest)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if wait_timeout(&mut self.child, Duration::from_millis(500)).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// What a finished `veltix` invocation did.
#[derive(Debug)]
struct Out {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: String,
}

impl Out {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    #[track_caller]
    fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code,
            Some(code),
            "expected exit {code}\nstdout:\n{}\nstderr:\n{}",
            self.text(),
            self.stderr
        );
        self
    }
}

/// Runs `veltix args...` to completion (killed after [`WAIT`]).
fn veltix(args: &[&str]) -> Out {
    let mut p = Proc::spawn(BIN, args);
    drop(p.stdin.take());
    let status = wait_timeout(&mut p.child, WAIT);
    let Some(status) = status else {
        panic!("veltix {} did not finish", args.join(" "));
    };
    let mut stdout = Vec::new();
    while let Ok(line) = p.lines.recv_timeout(WAIT) {
        stdout.extend_from_slice(line.as_bytes());
        stdout.push(b'\n');
    }
    // Let the stderr reader drain (the pipe is closed once the child is gone).
    std::thread::sleep(Duration::from_millis(20));
    Out {
        code: status.code(),
        stdout,
        stderr: p.stderr(),
    }
}

/// Runs `veltix args...` and returns its exact stdout bytes (for `--raw`).
fn veltix_raw(args: &[&str]) -> (Option<i32>, Vec<u8>) {
    let out = Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("run veltix");
    (out.status.code(), out.stdout)
}

/// `veltix serve --port 0 --until-stdin-closes extra...`, and its address
/// parsed from the first line.
fn serve(extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["serve", "--port", "0", "--until-stdin-closes"];
    args.extend_from_slice(extra);
    let mut p = Proc::spawn(BIN, &args);
    let first = p.next_line();
    let addr = first
        .strip_prefix("listening on ")
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("first line is not `listening on ADDR`: {first:?}"))
        .to_owned();
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    (p, addr)
}

/// A port nobody listens on (bound, then released).
fn closed_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn temp_file(name: &str, data: &[u8]) -> PathBuf {
    let path = std::env::temp_dir().join(format!("veltix-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, data).unwrap();
    path
}

#[test]
fn demo_runs_every_step() {
    let out = veltix(&["demo"]);
    out.assert_code(0);
    let text = out.text();
    assert!(
        text.contains("client: reply type=201") && text.contains("\"MAKE ME LOUD\""),
        "{text}"
    );
    assert!(text.contains("{\"sum\": 5}"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("reply from 127.0.0.1:") && l.contains("seq=1 time=")),
        "{text}"
    );
    assert!(text.contains("All steps worked"), "{text}");
}

#[test]
fn serve_echo_answers_request_ping_and_send() {
    let (mut server, addr) = serve(&["--echo"]);

    // request: the echoed text comes back, after a header line.
    let out = veltix(&["request", &addr, "--type", "200", "--text", "hi"]);
    out.assert_code(0);
    let text = out.text();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with(&format!("reply from {addr}: type=200 id="))
            && lines[0].contains(" size=2 ")
            && lines[0].ends_with("(text)"),
        "{text}"
    );
    assert_eq!(lines[1], "hi");
    server.wait_for("the request", |l| {
        l.contains(" message type=200 ") && l.ends_with(" size=2 \"hi\"")
    });

    // request --raw: exactly the payload bytes, binary included.
    let bin: Vec<u8> = (0..=255u8).collect();
    let file = temp_file("bin256", &bin);
    let (code, raw) = veltix_raw(&[
        "request",
        &addr,
        "--type",
        "300",
        "--file",
        file.to_str().unwrap(),
        "--raw",
    ]);
    std::fs::remove_file(&file).ok();
    assert_eq!(code, Some(0));
    assert_eq!(raw, bin);
    server.wait_for("the binary request", |l| {
        l.contains(" message type=300 ")
            && l.ends_with(&format!(" size=256 hex {}…", hex(&bin[..32])))
    });

    // A non-UTF-8 reply without --raw is printed in hex.
    let file = temp_file("ff00", &[0xff, 0x00]);
    let out = veltix(&[
        "request",
        &addr,
        "-t",
        "201",
        "--file",
        file.to_str().unwrap(),
    ]);
    std::fs::remove_file(&file).ok();
    out.assert_code(0);
    assert!(out.text().ends_with("(hex)\nff00\n"), "{}", out.text());

    // ping -c 3: three replies and ping(8)'s summary.
    let out = veltix(&["ping", &addr, "-c", "3", "--interval", "0.05"]);
    out.assert_code(0);
    let text = out.text();
    for seq in 1..=3 {
        let prefix = format!("reply from {addr}: seq={seq} time=");
        assert!(
            text.lines()
                .any(|l| l.starts_with(&prefix) && l.ends_with(" ms")),
            "no {prefix:?} in\n{text}"
        );
    }
    assert!(
        text.contains("3 transmitted, 3 received, 0% packet loss"),
        "{text}"
    );
    assert!(text.contains("rtt min/avg/max/mdev = "), "{text}");

    // send --json: re-encoded as Python's json.dumps, shown by the server.
    let out = veltix(&["send", &addr, "--type", "200", "--json", r#"{"a":1}"#]);
    out.assert_code(0);
    assert!(
        out.text()
            .starts_with(&format!("sent to {addr}: type=200 id=")),
        "{}",
        out.text()
    );
    server.wait_for("the JSON message", |l| {
        l.contains(" message type=200 ") && l.ends_with(r#" size=8 "{\"a\": 1}""#)
    });

    let (status, rest) = server.finish();
    assert!(status.success(), "{status:?}\n{}", server.stderr());
    let summary = rest.last().cloned().unwrap_or_default();
    assert!(
        summary.starts_with("veltix serve: stopped after") && summary.contains("clients"),
        "{:?}",
        server.seen
    );
    assert!(server
        .seen
        .iter()
        .any(|l| l.contains(" connected from 127.0.0.1:")));
    assert!(server
        .seen
        .iter()
        .any(|l| l.contains(" disconnected (127.0.0.1:")));
}

/// Every client command and the server on veltix-tokio (`--driver tokio`),
/// crossed with veltix-std on the other end; reserved types need `--system`.
#[test]
fn tokio_driver_serves_and_sends_and_system_types_need_a_flag() {
    for (server_driver, client_driver) in [("tokio", "tokio"), ("tokio", "std"), ("std", "tokio")] {
        let (mut server, addr) = serve(&["--echo", "--driver", server_driver]);
        let out = veltix(&[
            "request",
            &addr,
            "--type",
            "200",
            "--text",
            "hi",
            "--driver",
            client_driver,
        ]);
        out.assert_code(0);
        assert!(out.text().ends_with("(text)\nhi\n"), "{}", out.text());
        let out = veltix(&[
            "ping",
            &addr,
            "-c",
            "2",
            "--interval",
            "0.05",
            "--driver",
            client_driver,
        ]);
        out.assert_code(0);
        assert!(
            out.text().contains("2 transmitted, 2 received"),
            "{}",
            out.text()
        );
        let out = veltix(&[
            "send",
            &addr,
            "--type",
            "201",
            "--text",
            "x",
            "--driver",
            client_driver,
        ]);
        out.assert_code(0);
        server.wait_for("the message", |l| l.contains(" message type=201 "));

        // A reserved type is a usage error without --system ...
        let out = veltix(&[
            "send",
            &addr,
            "--type",
            "5",
            "--text",
            "x",
            "--driver",
            client_driver,
        ]);
        out.assert_code(2);
        assert!(out.stderr.contains("--system"), "{}", out.stderr);
        let out = veltix(&[
            "request",
            &addr,
            "-t",
            "0",
            "--text",
            "x",
            "--driver",
            client_driver,
        ]);
        out.assert_code(2);
        // ... and goes out with it (the server counts it as a message).
        let out = veltix(&[
            "send",
            &addr,
            "--type",
            "150",
            "--system",
            "--text",
            "sys",
            "--driver",
            client_driver,
        ]);
        out.assert_code(0);
        server.wait_for("the system-type message", |l| {
            l.contains(" message type=150 ")
        });
        let (status, _) = server.finish();
        assert!(status.success(), "{status:?}\n{}", server.stderr());
    }
}

#[test]
fn connection_refused_exits_3() {
    let target = format!("127.0.0.1:{}", closed_port());
    let out = veltix(&["ping", &target, "-c", "1"]);
    out.assert_code(3);
    assert!(
        out.stderr.starts_with("veltix: ") && out.stderr.contains("refused"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty(), "{}", out.text());
}

#[test]
fn server_full_exits_4_with_the_reason() {
    let (_server, addr) = serve(&["--max-connections", "1"]);
    // Hold the only slot with a connection stuck mid-handshake: read the
    // server's hello (proof it was accepted) and never answer.
    let mut holder = TcpStream::connect(&addr).unwrap();
    holder
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut len = [0u8; 2];
    holder.read_exact(&mut len).unwrap();
    let mut hello = vec![0u8; usize::from(u16::from_be_bytes(len))];
    holder.read_exact(&mut hello).unwrap();
    assert!(String::from_utf8_lossy(&hello).contains("\"pv\""));

    let out = veltix(&["ping", &addr, "-c", "1"]);
    out.assert_code(4);
    assert!(
        out.stderr.starts_with("veltix: ") && out.stderr.contains("server_full"),
        "{}",
        out.stderr
    );
    drop(holder);
}

#[test]
fn request_without_reply_exits_5() {
    // A Rust server with no handler: the request is dropped, never answered.
    let server = veltix_std::Server::new(veltix_std::ServerConfig::new("127.0.0.1", 0)).unwrap();
    server.start().unwrap();
    let addr = server.local_addr().unwrap().to_string();
    let started = Instant::now();
    let out = veltix(&[
        "request",
        &addr,
        "--type",
        "200",
        "--text",
        "anyone?",
        "--timeout",
        "0.3",
    ]);
    out.assert_code(5);
    assert!(
        out.stderr.starts_with("veltix: no reply from ") && out.stderr.contains("0.3s"),
        "{}",
        out.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    server.shutdown(std::time::Duration::from_secs(5));
}

#[test]
fn protocol_version_mismatch_exits_6() {
    // A fake server that announces protocol 2.0 in its hello.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let fake = std::thread::spawn(move || {
        let (mut sock, _) = listener.accept().unwrap();
        let hello = br#"{"v": "9.9.9", "pv": "2.0", "meta": {}}"#;
        let mut msg = u16::try_from(hello.len()).unwrap().to_be_bytes().to_vec();
        msg.extend_from_slice(hello);
        sock.write_all(&msg).unwrap();
        // Hold the socket until the client gives up.
        let _ = sock.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = sock.read(&mut [0u8; 64]);
    });
    let out = veltix(&["ping", &addr, "-c", "1"]);
    out.assert_code(6);
    assert!(
        out.stderr.contains("version mismatch") && out.stderr.contains("2.0"),
        "{}",
        out.stderr
    );
    fake.join().unwrap();
}

#[test]
fn usage_errors_exit_2_and_help_lists_exit_codes() {
    veltix(&["send", "127.0.0.1:1", "--type", "200"]).assert_code(2);
    veltix(&[
        "send",
        "127.0.0.1:1",
        "--type",
        "200",
        "--text",
        "a",
        "--json",
        "1",
    ])
    .assert_code(2);
    veltix(&["ping", "no-port-here"]).assert_code(2);
    let out = veltix(&["send", "127.0.0.1:1", "--type", "200", "--json", "{nope"]);
    out.assert_code(2);
    assert!(out.stderr.contains("--json"), "{}", out.stderr);
    let out = veltix(&["--json", "ping", "127.0.0.1:1"]);
    out.assert_code(2);
    // `veltix bench` itself is covered by tests/bench.rs; here only its usage errors.
    let out = veltix(&["bench", "--scenario", "nope"]);
    out.assert_code(2);
    assert!(out.stderr.contains("--scenario"), "{}", out.stderr);

    let help = veltix(&["--help"]);
    help.assert_code(0);
    let text = help.text();
    for needle in [
        "Exit status:",
        "3  cannot connect",
        "4  rejected",
        "5  timed out",
        "6  protocol",
    ] {
        assert!(text.contains(needle), "{needle:?} not in\n{text}");
    }
}

// ---------------------------------------------------------------------------
// Python interop

/// The Python interpreter with `veltix==3.3.0`, with the project's one
/// policy when it is missing: a panic under CI, else a loud skip.
use veltix_tests::python;

fn py_script(python: &Path, script: &str, args: &[&str]) -> Proc {
    let path = veltix_tests::script(script);
    let mut all = vec![path.to_str().unwrap()];
    all.extend_from_slice(args);
    Proc::spawn(python, &all)
}

/// The next JSON event of a Python peer whose `event` is `name`.
fn py_event(peer: &mut Proc, name: &str) -> Value {
    let line = peer.wait_for(name, |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["event"] == name)
    });
    serde_json::from_str(&line).unwrap()
}

/// `json.dumps(JSON_OBJ)` of `tests/python/peer_common.py` (the "json" spec).
fn python_json_obj(python: &Path) -> String {
    let code = format!(
        "import sys; sys.path.insert(0, {dir:?}); import json; from peer_common import JSON_OBJ; \
         sys.__stdout__.write(json.dumps(JSON_OBJ)); sys.__stdout__.flush()",
        dir = veltix_tests::script("").to_str().unwrap()
    );
    let out = Command::new(python)
        .args(["-c", &code])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn cli_client_against_python_server() {
    let Some(python) = python() else { return };
    let mut server = py_script(&python, "py_server.py", &["--port", "0"]);
    let listening = py_event(&mut server, "listening");
    let addr = format!("127.0.0.1:{}", listening["port"]);

    // Text request: Python receives exactly the UTF-8 bytes and echoes them.
    let text = "hello, veltix \u{2713} caf\u{e9}";
    let out = veltix(&["request", &addr, "--type", "200", "--text", text]);
    out.assert_code(0);
    assert_eq!(out.text().lines().nth(1), Some(text), "{}", out.text());
    let recv = py_event(&mut server, "recv");
    assert_eq!(recv["type"], 200);
    assert_eq!(recv["hex"], hex(text.as_bytes()));

    // Binary request, raw reply: byte for byte both ways.
    let bin: Vec<u8> = (0..=255u8).collect();
    let file = temp_file("py-bin256", &bin);
    let (code, raw) = veltix_raw(&[
        "request",
        &addr,
        "--type",
        "200",
        "--file",
        file.to_str().unwrap(),
        "--raw",
    ]);
    std::fs::remove_file(&file).ok();
    assert_eq!(code, Some(0));
    assert_eq!(raw, bin);
    assert_eq!(py_event(&mut server, "recv")["hex"], hex(&bin));

    // JSON request: our re-encoding equals Python's json.dumps byte for byte
    // (the server checks `json_equal`), and so does its answer.
    let json_obj = python_json_obj(&python);
    let out = veltix(&["request", &addr, "--type", "201", "--json", &json_obj]);
    out.assert_code(0);
    let recv = py_event(&mut server, "recv");
    assert_eq!(recv["json_equal"], true, "{recv}");
    assert_eq!(recv["hex"], hex(json_obj.as_bytes()));
    assert_eq!(out.text().lines().nth(1), Some(json_obj.as_str()));

    // ping: Python answers PINGs.
    let out = veltix(&["ping", &addr, "-c", "3", "-i", "0.05"]);
    out.assert_code(0);
    assert_eq!(
        out.text()
            .lines()
            .filter(|l| l.starts_with("reply from "))
            .count(),
        3,
        "{}",
        out.text()
    );
    assert!(out
        .text()
        .contains("3 transmitted, 3 received, 0% packet loss"));

    // send: fire and forget; Python still gets it.
    let out = veltix(&["send", &addr, "--type", "200", "--text", "x"]);
    out.assert_code(0);
    assert_eq!(py_event(&mut server, "recv")["hex"], "78");

    let (status, _) = server.finish();
    let exit = server.seen.iter().rev().find_map(|l| {
        serde_json::from_str::<Value>(l)
            .ok()
            .filter(|v| v["event"] == "exit")
    });
    assert_eq!(exit.map(|v| v["failures"].clone()), Some(Value::from(0)));
    assert!(status.success(), "{status:?}");
}

#[test]
fn python_client_against_cli_server() {
    let Some(python) = python() else { return };
    let (mut server, addr) = serve(&["--echo"]);
    let port = addr.rsplit_once(':').unwrap().1.to_owned();

    // send_and_wait of every payload kind: each reply must carry the same
    // bytes and id (`match`), checked by the Python side.
    let specs = ["text", "bin256", "empty", "json", "frame"];
    let mut args = vec!["--port", port.as_str(), "--scenario", "echo"];
    for s in &specs {
        args.extend(["--payload", s]);
    }
    let mut client = py_script(&python, "py_client.py", &args);
    for spec in specs {
        let reply = py_event(&mut client, "reply");
        assert_eq!(reply["spec"], spec);
        assert_eq!(reply["match"], true, "{reply}");
        assert_eq!(reply["id"], reply["sent_id"], "{reply}");
    }
    let (status, _) = client.finish();
    assert!(status.success(), "py_client echo: {status:?}");

    // What the server printed for each: type, size and preview.
    let text = "hello, veltix \u{2713} caf\u{e9}";
    let bin: Vec<u8> = (0..=255u8).collect();
    let json_len = python_json_obj(&python).len();
    let expected = [
        format!(" message type=200 id={{}} size={} {text:?}", text.len()),
        format!(
            " message type=200 id={{}} size=256 hex {}…",
            hex(&bin[..32])
        ),
        " message type=200 id={} size=0 \"\"".to_owned(),
        format!(" message type=201 id={{}} size={json_len} "),
        " message type=200 id={} size=20 hex 5658".to_owned(),
    ];
    for want in expected {
        let (head, tail) = want.split_once("{}").unwrap();
        let (head, tail) = (head.to_owned(), tail.to_owned());
        server.wait_for(&want, move |l| {
            l.split_once(head.as_str())
                .and_then(|(_, rest)| rest.split_once(' '))
                .is_some_and(|(id, rest)| {
                    id.parse::<u16>().is_ok() && format!(" {rest}").starts_with(tail.as_str())
                })
        });
    }

    // Python's ping_server against our server.
    let mut pinger = py_script(
        &python,
        "py_client.py",
        &["--port", &port, "--scenario", "ping"],
    );
    let ping = py_event(&mut pinger, "ping");
    assert!(ping["rtt"].is_f64(), "{ping}");
    let (status, _) = pinger.finish();
    assert!(status.success());

    let (status, rest) = server.finish();
    assert!(status.success());
    assert!(
        rest.last().is_some_and(|l| l.contains("5 messages")),
        "{:?}",
        server.seen
    );
}

/// `veltix passwd` makes an auth-file line; `serve --auth-file` requires
/// authentication; `request --user` (password from the environment) and
/// `ping --token-env` get in, a wrong password exits 7, a client without
/// credentials exits 7 with the reason.
#[test]
fn auth_file_users_and_tokens() {
    let with_env = |args: &[&str], var: &str, value: &str| {
        let out = Command::new(BIN)
            .args(args)
            .env(var, value)
            .stdin(Stdio::null())
            .output()
            .expect("run veltix");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, line, err) = with_env(&["passwd", "alice", "--password-env", "PW"], "PW", "pencil");
    assert_eq!(code, Some(0), "{err}");
    assert!(line.starts_with("user alice SCRAM-SHA-256$4096:"), "{line}");
    assert!(!line.contains("pencil"));
    let file = temp_file("auth.txt", format!("{line}token bot tok_123\n").as_bytes());
    let (mut srv, addr) = serve(&["--echo", "--auth-file", file.to_str().unwrap()]);

    let (code, out, err) = with_env(
        &[
            "request",
            &addr,
            "--type",
            "200",
            "--text",
            "hi",
            "--user",
            "alice",
            "--require-server-auth",
        ],
        "VELTIX_PASSWORD",
        "pencil",
    );
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("hi"), "{out}");
    let (code, _, err) = with_env(
        &["ping", &addr, "-c", "1", "--token-env", "TOK"],
        "TOK",
        "tok_123",
    );
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = with_env(
        &[
            "request", &addr, "--type", "200", "--text", "hi", "--user", "alice",
        ],
        "VELTIX_PASSWORD",
        "wrong",
    );
    assert_eq!(code, Some(7), "{err}");
    assert!(err.contains("authentication failed"), "{err}");
    veltix(&["send", &addr, "--type", "200", "--text", "hi"]).assert_code(7);

    drop(srv.stdin.take());
    let log: Vec<String> = std::iter::from_fn(|| srv.lines.recv_timeout(WAIT).ok()).collect();
    let log = log.join("\n");
    assert!(log.contains("as alice (SCRAM-SHA-256)"), "{log}");
    assert!(log.contains("as bot (BEARER)"), "{log}");
    let _ = std::fs::remove_file(file);
}
