//! The std server under file-descriptor exhaustion (EMFILE on `accept`):
//! the I/O thread must neither spin nor wedge, and must recover once
//! descriptors are available again.
//!
//! Alone in its own test binary: it lowers the whole process's
//! `RLIMIT_NOFILE` (from a Python child, so this process needs no new
//! descriptor while the limit is low). Linux only.

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use veltix_std::{Server, ServerConfig};

const SCRIPT: &str = r#"
import os, resource, socket, sys, time
pid, port = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
n = len(os.listdir(f"/proc/{pid}/fd"))
resource.prlimit(pid, resource.RLIMIT_NOFILE, (n + 2, hard))
socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(20)]
time.sleep(0.3)
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) + int(f[12])
c0 = cpu(); time.sleep(1.0); c1 = cpu()
resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
print(c1 - c0, os.sysconf("SC_CLK_TCK"), flush=True)
sys.stdin.read()
"#;

#[test]
fn accept_under_emfile_neither_spins_nor_wedges_and_recovers() {
    let python = veltix_tests::python().unwrap_or_else(|| "python3".into());
    let server = Server::new(ServerConfig::new("127.0.0.1", 0).max_workers(1)).unwrap();
    server.start().unwrap();
    let port = server.local_addr().unwrap().port();
    let mut child = Command::new(&python)
        .args([
            "-c",
            SCRIPT,
            &std::process::id().to_string(),
            &port.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let mut it = line.split_whitespace().map(|x| x.parse::<u64>().unwrap());
    let (ticks, hz) = (it.next().unwrap(), it.next().unwrap());
    // A spinning I/O thread would burn about a whole CPU (hz ticks a second).
    assert!(
        ticks * 5 < hz,
        "{ticks} ticks of CPU in 1 s at {hz} Hz while out of descriptors"
    );
    // Descriptors are back: every pending connection gets accepted.
    let end = Instant::now() + Duration::from_secs(5);
    while server.stats().accepted < 20 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(server.stats().accepted, 20, "{:?}", server.stats());
    drop(child.stdin.take());
    let _ = child.wait();
    server.shutdown(Duration::from_millis(200));
}
