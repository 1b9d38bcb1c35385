//! `veltix demo`: a server and a client in one process, talking over
//! loopback, narrated step by step for a newcomer.
//!
//! Every line is printed by the main thread: the callbacks (which run on the
//! drivers' worker threads) hand their observations over a channel, so the
//! output reads in a fixed order.

use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

use serde_json::json;
use veltix_std::{
    payload, Client, ClientConfig, ClientTls, MessageType, Server, ServerConfig, ServerTls,
};

use crate::tls::SelfSigned;

/// The routes below are registered once on a fresh server: a refusal is a bug.
fn routed(r: Result<(), veltix_std::Error>) -> Result<(), CliError> {
    r.map_err(|e| CliError::failure(format!("cannot register a route: {e}")))
}

use crate::common::{millis, preview};
use crate::exit::{CliError, TIMEOUT};

/// Fire-and-forget chat line (client → server).
const CHAT: MessageType = MessageType::new(200);
/// Request: the server answers with the payload upper-cased.
const SHOUT: MessageType = MessageType::new(201);
/// Request: JSON `{"a": x, "b": y}`, answered with `{"sum": x + y}`.
const SUM: MessageType = MessageType::new(202);
/// Server → client push.
const NEWS: MessageType = MessageType::new(203);

/// How long the demo waits for any one thing to happen.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// Observations of the callbacks, printed by the main thread.
struct Narrator {
    rx: Receiver<String>,
}

impl Narrator {
    /// Waits for the next observation and prints it, indented.
    fn expect(&self, what: &str) -> Result<(), CliError> {
        match self.rx.recv_timeout(STEP_TIMEOUT) {
            Ok(line) => {
                println!("    {line}");
                Ok(())
            }
            Err(_) => Err(CliError::new(
                TIMEOUT,
                format!("{what} did not happen within {}s", STEP_TIMEOUT.as_secs()),
            )),
        }
    }
}

fn step(n: u32, text: &str) {
    println!();
    println!("[{n}] {text}");
}

fn sum_reply(msg_payload: &[u8]) -> Result<bytes::Bytes, String> {
    let v: serde_json::Value = payload::decode_json(msg_payload).map_err(|e| e.to_string())?;
    let a = v["a"].as_i64().ok_or("missing integer \"a\"")?;
    let b = v["b"].as_i64().ok_or("missing integer \"b\"")?;
    payload::json(&json!({ "sum": a + b })).map_err(|e| e.to_string())
}

/// Arguments of `veltix demo`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DemoArgs {
    /// Over TLS, with a throwaway self-signed certificate made on the spot.
    #[arg(long)]
    pub tls: bool,
}

/// A server whose callbacks report what they see to `tx`.
fn demo_server(tx: &Sender<String>, tls: Option<ServerTls>) -> Result<Server, CliError> {
    let config = ServerConfig::new("127.0.0.1", 0);
    let server = match tls {
        Some(tls) => Server::with_tls(config, tls)?,
        None => Server::new(config)?,
    };
    let t = tx.clone();
    server.on_connect(move |_, client| {
        if let Some(tls) = client.tls_info() {
            let _ = t.send(format!(
                "server: TLS handshake done with #{}: {:?}, {:?}",
                client.id(),
                tls.protocol,
                tls.cipher_suite
            ));
        }
        let hello = client.hello();
        let (v, pv) = hello.as_ref().map_or(("?", "?"), |h| {
            (
                h.version.as_deref().unwrap_or("?"),
                h.protocol_version.as_str(),
            )
        });
        let _ = t.send(format!(
            "server: client #{} connected from {} (its hello: v={v}, protocol {pv})",
            client.id(),
            client.addr()
        ));
    });
    let t = tx.clone();
    server.on_disconnect(move |_, client| {
        let _ = t.send(format!("server: client #{} disconnected", client.id()));
    });
    let t = tx.clone();
    routed(server.route(CHAT, move |_, client, msg| {
        let _ = t.send(format!(
            "server: got type={} id={} from #{}: {}",
            msg.message_type,
            msg.request_id,
            client.id(),
            preview(&msg.payload)
        ));
    }))?;
    let t = tx.clone();
    routed(server.route(SHOUT, move |server, client, msg| {
        let loud = String::from_utf8_lossy(&msg.payload).to_uppercase();
        let _ = t.send(format!(
            "server: got type={} id={}: {}, replies {} with the same id",
            msg.message_type,
            msg.request_id,
            preview(&msg.payload),
            preview(loud.as_bytes())
        ));
        if let Err(e) = server.reply(client, &msg, SHOUT, loud) {
            tracing::error!(error = %e, "demo reply failed");
        }
    }))?;
    let t = tx.clone();
    routed(server.route(SUM, move |server, client, msg| {
        match sum_reply(&msg.payload) {
            Ok(answer) => {
                let _ = t.send(format!(
                    "server: got JSON {}, replies {}",
                    String::from_utf8_lossy(&msg.payload),
                    String::from_utf8_lossy(&answer)
                ));
                if let Err(e) = server.reply(client, &msg, SUM, answer) {
                    tracing::error!(error = %e, "demo reply failed");
                }
            }
            Err(e) => {
                let _ = t.send(format!("server: bad JSON request: {e}"));
            }
        }
    }))?;
    Ok(server)
}

/// Runs the demo; every step must work.
pub fn run(args: &DemoArgs) -> Result<(), CliError> {
    if args.tls {
        println!("veltix demo --tls: a Veltix server and a client in this one process, over TLS on loopback TCP.");
    } else {
        println!(
            "veltix demo: a Veltix server and a client in this one process, over loopback TCP."
        );
    }
    println!("Each step says what the client or the server does, then what the other side saw.");

    let tls = if args.tls {
        let ss = SelfSigned::new()?;
        println!();
        println!("[0] a throwaway self-signed certificate for localhost and 127.0.0.1 (rcgen, ECDSA P-256):");
        println!("    the server presents it; the client trusts exactly it (its CA bundle is that one certificate)");
        Some(ss.configs()?)
    } else {
        None
    };
    let (server_tls, client_tls) = tls.map_or((None, None), |(s, c)| (Some(s), Some(c)));
    let (tx, rx) = mpsc::channel::<String>();
    let narrator = Narrator { rx };
    let server = demo_server(&tx, server_tls)?;
    let result = steps(&server, &tx, &narrator, client_tls);
    server.shutdown(STEP_TIMEOUT);
    if result.is_ok() {
        step(
            10,
            "server: shutdown() stops listening and closes every connection (flushing within a deadline)",
        );
        println!();
        println!("All steps worked. Now try it across two terminals:");
        if args.tls {
            println!("  veltix serve --port 8443 --echo --tls-self-signed   # prints where its certificate is");
            println!(
                "  veltix request 127.0.0.1:8443 --tls --tls-ca <that file> --type 200 --text hi"
            );
            println!("  (with your own: veltix serve --tls-cert cert.pem --tls-key key.pem [--tls-client-ca ca.pem])");
        } else {
            println!("  veltix serve --port 8080 --echo");
            println!("  veltix request 127.0.0.1:8080 --type 200 --text hi");
            println!("  veltix ping 127.0.0.1:8080 -c 3");
        }
    }
    result
}

fn steps(
    server: &Server,
    tx: &Sender<String>,
    narrator: &Narrator,
    tls: Option<ClientTls>,
) -> Result<(), CliError> {
    let ctx = |n: u32| move |e: CliError| e.context(format_args!("demo step {n} failed"));

    server.start().map_err(CliError::from).map_err(ctx(1))?;
    let addr = server
        .local_addr()
        .ok_or_else(|| CliError::failure("the server is not running"))
        .map_err(ctx(1))?;
    step(
        1,
        &format!(
            "server: listening on {addr}{} (port 0 asked the OS for a free port)",
            if tls.is_some() { ", TLS only" } else { "" }
        ),
    );

    let config = ClientConfig::new("127.0.0.1", addr.port());
    let over_tls = tls.is_some();
    let client = match tls {
        Some(tls) => Client::with_tls(config, tls)?,
        None => Client::new(config)?,
    };
    let t = tx.clone();
    client.on_recv(move |_, msg| {
        let _ = t.send(format!(
            "client: got type={} id={}: {}",
            msg.message_type,
            msg.request_id,
            preview(&msg.payload)
        ));
    });
    let started = Instant::now();
    client
        .connect()
        .map_err(|e| CliError::connect(e, &addr.to_string()))
        .map_err(ctx(2))?;
    let took = millis(started.elapsed());
    match client.tls_info() {
        Some(tls) => {
            step(
                2,
                &format!("client: connected to {addr}: TCP connect + TLS handshake + Veltix handshake took {took} ms"),
            );
            println!(
                "    client: TLS protocol {:?}, cipher suite {:?}",
                tls.protocol, tls.cipher_suite
            );
            println!(
                "    client: ALPN {}, server certificate verified for 127.0.0.1{}",
                tls.alpn.as_deref().map_or_else(
                    || "none".to_owned(),
                    |a| String::from_utf8_lossy(a).into_owned()
                ),
                tls.peer_identity
                    .map_or_else(String::new, |id| format!(" (subject {id})"))
            );
            narrator.expect("the server's TLS report").map_err(ctx(2))?;
        }
        None if over_tls => {
            return Err(CliError::failure("connected without TLS").context("demo step 2 failed"))
        }
        None => step(
            2,
            &format!("client: connected to {addr}: TCP connect + Veltix handshake took {took} ms"),
        ),
    }
    narrator.expect("the server's on_connect").map_err(ctx(2))?;

    let r = client_steps(server, &client, narrator);
    client.disconnect();
    r?;
    step(9, "client: disconnect()");
    narrator
        .expect("the server's on_disconnect")
        .map_err(ctx(9))?;
    Ok(())
}

fn client_steps(server: &Server, client: &Client, narrator: &Narrator) -> Result<(), CliError> {
    let ctx = |n: u32| move |e: CliError| e.context(format_args!("demo step {n} failed"));
    let peer = client
        .peer_addr()
        .map_or_else(|| "the server".to_owned(), |a| a.to_string());

    let text = "hello, server";
    let id = client
        .send(CHAT, text, Some(STEP_TIMEOUT))
        .map_err(CliError::from)
        .map_err(ctx(3))?;
    step(
        3,
        &format!(
            "client: send(type={CHAT}, {}) - fire and forget (waits only for queue room), id={id}",
            preview(text.as_bytes())
        ),
    );
    narrator.expect("the server's route").map_err(ctx(3))?;

    let text = "make me loud";
    step(
        4,
        &format!(
            "client: request(type={SHOUT}, {}) - Python's send_and_wait; the reply carries its id",
            preview(text.as_bytes())
        ),
    );
    let started = Instant::now();
    let reply = client
        .request(SHOUT, text, Some(STEP_TIMEOUT))
        .map_err(|e| CliError::request(e, &peer, STEP_TIMEOUT))
        .map_err(ctx(4))?;
    let rtt = started.elapsed();
    narrator.expect("the server's route").map_err(ctx(4))?;
    println!(
        "    client: reply type={} id={}: {} in {} ms",
        reply.message_type,
        reply.request_id,
        preview(&reply.payload),
        millis(rtt)
    );
    if &reply.payload[..] != b"MAKE ME LOUD" {
        return Err(CliError::failure("unexpected reply").context("demo step 4 failed"));
    }

    let body = payload::json(&json!({"a": 2, "b": 3}))
        .map_err(|e| CliError::failure(e.to_string()))
        .map_err(ctx(5))?;
    step(
        5,
        &format!(
            "client: request(type={SUM}, JSON {}) - JSON payloads",
            String::from_utf8_lossy(&body)
        ),
    );
    let reply = client
        .request(SUM, body, Some(STEP_TIMEOUT))
        .map_err(|e| CliError::request(e, &peer, STEP_TIMEOUT))
        .map_err(ctx(5))?;
    narrator.expect("the server's route").map_err(ctx(5))?;
    let sum: serde_json::Value = reply
        .json()
        .map_err(|e| CliError::failure(format!("the reply is not JSON: {e}")))
        .map_err(ctx(5))?;
    println!(
        "    client: reply id={}: {} (sum = {})",
        reply.request_id,
        String::from_utf8_lossy(&reply.payload),
        sum["sum"]
    );
    if sum["sum"] != 5 {
        return Err(CliError::failure("wrong sum").context("demo step 5 failed"));
    }

    let me = server
        .clients()
        .into_iter()
        .next()
        .ok_or_else(|| CliError::failure("the server lists no client"))
        .map_err(ctx(6))?;
    let news = "news from the server";
    let id = server
        .send(&me, NEWS, news, Some(STEP_TIMEOUT))
        .map_err(CliError::from)
        .map_err(ctx(6))?;
    step(
        6,
        &format!(
            "server: send(client #{}, type={NEWS}, {}) - servers can push too, id={id}",
            me.id(),
            preview(news.as_bytes())
        ),
    );
    narrator.expect("the client's on_recv").map_err(ctx(6))?;

    step(
        7,
        "client: ping() x3 - PING frames (Python's ping_server), answered by the server's protocol core",
    );
    for seq in 1..=3 {
        let rtt = client
            .ping(Some(STEP_TIMEOUT))
            .map_err(|e| CliError::new(TIMEOUT, format!("no PONG from {peer}: {e}")))
            .map_err(ctx(7))?;
        println!("    reply from {peer}: seq={seq} time={} ms", millis(rtt));
    }

    step(
        8,
        "server: ping(client) - the other way round (Python's ping_client)",
    );
    let rtt = server
        .ping(&me, Some(STEP_TIMEOUT))
        .map_err(|e| CliError::new(TIMEOUT, format!("no PONG from the client: {e}")))
        .map_err(ctx(8))?;
    println!(
        "    reply from client #{}: time={} ms",
        me.id(),
        millis(rtt)
    );
    Ok(())
}
