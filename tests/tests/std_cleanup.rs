//! `shutdown` and `disconnect` leave no thread running and no socket open.
//!
//! Alone in its own test binary: it counts the whole process's threads and
//! sockets, which tests running in parallel would disturb.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use veltix_proto::MessageType;
use veltix_std::{Client, ClientConfig, Server, ServerConfig};

const T: MessageType = MessageType::new(200);
const SECS5: Option<Duration> = Some(Duration::from_secs(5));

fn echo_server(cfg: ServerConfig) -> (Server, SocketAddr) {
    let s = Server::new(cfg).unwrap();
    s.on_recv(|server, client, msg| {
        let _ = server.reply(client, &msg, msg.message_type, msg.payload.clone());
    });
    s.start().unwrap();
    let addr = s.local_addr().unwrap();
    (s, addr)
}

fn client_for(addr: SocketAddr) -> ClientConfig {
    ClientConfig::new("127.0.0.1", addr.port())
}

fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    f()
}

#[test]
fn shutdown_and_disconnect_leave_no_thread_and_no_socket() {
    // Warm up lazily created process-wide resources first.
    let threads0 = veltix_tests::thread_count();
    let sockets0 = veltix_tests::socket_count();
    for _ in 0..2 {
        let (s, addr) = echo_server(ServerConfig::new("127.0.0.1", 0));
        let clients: Vec<Client> = (0..5)
            .map(|_| {
                let c = Client::new(client_for(addr)).unwrap();
                c.connect().unwrap();
                c.request(T, "x", SECS5).unwrap();
                c
            })
            .collect();
        assert!(veltix_tests::thread_count() > threads0 + 10);
        // Disconnect some clients, let the server close the others.
        for c in &clients[..2] {
            assert!(c.disconnect());
        }
        s.shutdown(Duration::from_secs(1));
        for c in &clients[2..] {
            c.disconnect();
        }
    }
    assert!(
        wait_until(Duration::from_secs(2), || veltix_tests::thread_count()
            <= threads0),
        "threads {} > {threads0}",
        veltix_tests::thread_count()
    );
    assert!(
        wait_until(Duration::from_secs(2), || veltix_tests::socket_count()
            <= sockets0),
        "sockets {} > {sockets0}",
        veltix_tests::socket_count()
    );
}
