//! The tokio route of simulation: the chat example's service
//! (`veltix-sim/examples/chat/logic.rs`, the same logic the sans-IO kit
//! runs in `veltix-sim/tests/chat.rs`) on an unchanged `veltix-tokio`
//! server and clients, under turmoil: simulated hosts, simulated time, a
//! simulated network with random latency, a partition and its repair.
//! The driver runs over turmoil's TCP through its transport seam (a
//! [`Listener`] for the server, a [`Connector`] for the clients).
//!
//! Checked as it runs and at the end, per seed: nothing delivered twice;
//! replies name the client that asked; room messages reach only clients in
//! the room; the partitioned clients notice (their requests time out),
//! reconnect within the retry policy once the partition heals, and every
//! client ends connected; the last round of room messages reaches every
//! member exactly once. The same seed gives the same trace, event for
//! event (a test runs one seed twice and compares).
//!
//! `VELTIX_SIM_SEEDS=N` adds N random seeds; `VELTIX_SIM_SEED=S` runs seed
//! S only (a failure prints its seed and this command); `VELTIX_SIM_TRACE=1`
//! prints every run's trace.

#[allow(dead_code, clippy::all)]
#[path = "../../veltix-sim/examples/chat/logic.rs"]
mod logic;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logic::{room_tag, Action, ChatClient, ChatServer, ClientMsg, Conn, ServerMsg};
use veltix_proto::{ClientConfig, MessageType, ServerConfig};
use veltix_tokio::{Client, ClientEvent, Connector, Error, Listener, Server};

const PORT: u16 = 7070;
const CHAT: MessageType = MessageType::new(210);
const CLIENTS: usize = 4;
/// Clients `c0` and `c1` are cut off from the server from `CUT` to `HEAL`.
const CUT: Duration = Duration::from_secs(6);
const HEAL: Duration = Duration::from_secs(14);
/// Chatter stops; the last round is said at `FINAL`; the run ends at `END`.
const QUIET: Duration = Duration::from_secs(28);
const FINAL: Duration = Duration::from_secs(31);
const END: Duration = Duration::from_secs(36);

/// turmoil's listener as a veltix-tokio [`Listener`].
struct SimListener(turmoil::net::TcpListener);

impl Listener for SimListener {
    type Stream = turmoil::net::TcpStream;
    async fn accept(&mut self) -> std::io::Result<(Self::Stream, SocketAddr)> {
        self.0.accept().await
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// turmoil's TCP as a veltix-tokio [`Connector`].
struct SimConnector;

impl Connector for SimConnector {
    type Stream = turmoil::net::TcpStream;
    async fn connect(&self, host: &str, port: u16) -> Result<(Self::Stream, SocketAddr), Error> {
        let s = turmoil::net::TcpStream::connect((host, port)).await?;
        let peer = s.peer_addr()?;
        Ok((s, peer))
    }
    fn local_addr(s: &Self::Stream) -> Option<SocketAddr> {
        s.local_addr().ok()
    }
}

/// What the run saw, shared by every host (turmoil runs them on one thread,
/// in an order fixed by the seed).
#[derive(Default)]
struct Book {
    seed: u64,
    /// Every event, with the simulated time: compared across runs.
    trace: Vec<String>,
    /// Per receiver: the room messages it got, by (sender, id).
    got: BTreeMap<String, BTreeSet<(String, u64)>>,
    /// The last round: (sender, id) -> room.
    finals: BTreeMap<(String, u64), String>,
    /// Connections established, per client.
    connects: BTreeMap<String, u32>,
    /// Requests that failed (timed out, connection lost), per client.
    failed: BTreeMap<String, u32>,
    /// Clients connected at the end.
    connected_at_end: BTreeSet<String>,
}

impl Book {
    fn note(&mut self, who: &str, what: impl std::fmt::Display) {
        let t = turmoil::elapsed();
        self.trace
            .push(format!("{:>9.3} {who:>6} {what}", t.as_secs_f64()));
    }

    fn fail(&self, what: impl std::fmt::Display) -> ! {
        let tail: Vec<&String> = self.trace.iter().rev().take(25).rev().collect();
        panic!(
            "seed {}: {what}\nreplay: VELTIX_SIM_SEED={} cargo test -p veltix-tests --test turmoil_chat -- --nocapture\nlast events:\n{}",
            self.seed,
            self.seed,
            tail.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n")
        );
    }
}

type Shared = Arc<Mutex<Book>>;

fn book(b: &Shared) -> std::sync::MutexGuard<'_, Book> {
    b.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn rooms_of(i: usize) -> Vec<&'static str> {
    match i % 3 {
        0 => vec!["lobby", "dev"],
        1 => vec!["lobby", "ops"],
        _ => vec!["lobby", "dev", "ops"],
    }
}

/// The chat server: the example's logic behind veltix-tokio's handlers.
async fn server(book_: Shared) -> turmoil::Result {
    let server = Server::new(ServerConfig::new("0.0.0.0", PORT))?;
    let chat = Arc::new(Mutex::new(ChatServer::default()));
    let c = Arc::clone(&chat);
    server.on_connect(move |_s: Server, peer| {
        c.lock().unwrap().connected(Conn(peer.id()));
        async {}
    });
    let c = Arc::clone(&chat);
    server.on_disconnect(move |_s: Server, peer| {
        c.lock().unwrap().disconnected(Conn(peer.id()));
        async {}
    });
    let c = Arc::clone(&chat);
    let b = Arc::clone(&book_);
    server.route(CHAT, move |s: Server, peer, m| {
        let conn = Conn(peer.id());
        let Some(msg) = ClientMsg::decode(&m.payload) else {
            book(&b).fail(format!("the server got a garbled message {:?}", m.payload));
        };
        // The whole message under one lock: tags, replies and broadcasts
        // go out in the order the logic decided.
        let mut chat = c.lock().unwrap();
        for action in chat.handle(conn, msg) {
            match action {
                Action::Reply(r) => {
                    let _ = s.reply(&peer, &m, CHAT, r.encode().into_bytes());
                }
                Action::ToRoom { room, msg } => {
                    let n = s
                        .broadcast_tag(CHAT, msg.encode().as_bytes(), &room_tag(&room), None)
                        .unwrap_or(0);
                    book(&b).note("server", format!("{} to {room}: {n} copies", msg.encode()));
                }
                Action::Enter { room } => peer.set_tag(&room_tag(&room), true.into()),
                Action::Exit { room } => {
                    peer.remove_tag(&room_tag(&room));
                }
            }
        }
        async {}
    })?;
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", PORT)).await?;
    server.start_on(SimListener(listener))?;
    book(&book_).note("server", "listening");
    std::future::pending::<()>().await;
    Ok(())
}

/// A small generator for the clients' choices (seeded: no ambient randomness).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// One request and its checked reply; `None` when it failed.
async fn ask(client: &Client, name: &str, b: &Shared, msg: ClientMsg) -> Option<ServerMsg> {
    let encoded = msg.encode();
    match client
        .request(CHAT, encoded.clone().into_bytes(), None)
        .await
    {
        Ok(f) => {
            let Some(reply) = ServerMsg::decode(&f.payload) else {
                book(b).fail(format!("{name}: a garbled reply {:?}", f.payload));
            };
            let to = match &reply {
                ServerMsg::Welcome { to }
                | ServerMsg::Joined { to, .. }
                | ServerMsg::Left { to, .. }
                | ServerMsg::Members { to, .. } => to.clone(),
                other => book(b).fail(format!("{name}: {encoded} answered with {other:?}")),
            };
            if to != name {
                book(b).fail(format!("{name} got a reply meant for {to}: {reply:?}"));
            }
            book(b).note(name, format!("{encoded} -> {}", reply.encode()));
            Some(reply)
        }
        Err(e) => {
            let mut bk = book(b);
            *bk.failed.entry(name.to_owned()).or_default() += 1;
            bk.note(name, format!("{encoded} failed: {e}"));
            None
        }
    }
}

/// Hello and joins on a new connection; `false` if a request failed.
async fn join_all(client: &Client, chat: &mut ChatClient, b: &Shared) -> bool {
    let mut todo: Vec<ClientMsg> = chat.on_connected();
    while let Some(msg) = todo.pop() {
        match ask(client, &chat.name, b, msg).await {
            Some(reply) => todo.extend(chat.on_reply(&reply)),
            None => return false,
        }
    }
    true
}

/// A room message received: checked and counted.
fn received(b: &Shared, chat: &ChatClient, payload: &[u8]) {
    let mut bk = book(b);
    let Some(ServerMsg::Said { room, from, id, .. }) = ServerMsg::decode(payload) else {
        bk.fail(format!("{}: not a room message: {payload:?}", chat.name));
    };
    if !chat.wanted.contains(&room) {
        bk.fail(format!(
            "{} got {from}'s message {id} for {room}, a room it is not in",
            chat.name
        ));
    }
    if !bk
        .got
        .entry(chat.name.clone())
        .or_default()
        .insert((from.clone(), id))
    {
        bk.fail(format!("{} got {from}'s message {id} twice", chat.name));
    }
    bk.note(&chat.name, format!("got {from}/{id} in {room}"));
}

/// A chat client: connects, joins its rooms, talks, checks what it gets;
/// a connection whose requests keep timing out is dropped and dialled again
/// (Veltix has no keepalive: the application notices a dead link).
async fn client(i: usize, seed: u64, b: Shared) -> turmoil::Result {
    let name = format!("c{i}");
    let mut config = ClientConfig::new("server", PORT);
    config.handshake_timeout = Duration::from_secs(1);
    config.request_timeout = Duration::from_millis(700);
    config.retry = 30;
    config.retry_delay = Duration::from_millis(250);
    config.retry_seed = Some(seed ^ (i as u64 + 1));
    let client = Client::with_connector(config, SimConnector, None)?;
    let mut chat = ChatClient::new(&name, &rooms_of(i));
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (i as u64 + 1) | 1);
    // The connection needs its hello and joins (set by `Connected` events).
    let mut fresh = false;
    let mut misses = 0;
    let mut said_final = false;
    client.connect().await?;
    loop {
        let now = turmoil::elapsed();
        if now >= END {
            break;
        }
        if fresh && client.is_connected() {
            fresh = !join_all(&client, &mut chat, &b).await;
        }
        if misses >= 2 {
            book(&b).note(&name, "link looks dead: reconnecting");
            client.disconnect().await;
            misses = 0;
            fresh = false;
            if let Err(e) = client.connect().await {
                book(&b).fail(format!("{name} gave up reconnecting: {e}"));
            }
            continue;
        }
        let pause = Duration::from_millis(150 + rng.next() % 300);
        tokio::select! {
            biased;
            ev = client.recv() => match ev {
                Some(ClientEvent::Message(f)) => received(&b, &chat, &f.payload),
                Some(ClientEvent::Connected(_)) => {
                    let mut bk = book(&b);
                    *bk.connects.entry(name.clone()).or_default() += 1;
                    bk.note(&name, "connected");
                    fresh = true;
                }
                Some(ClientEvent::Disconnected(d)) => {
                    if d.attempt > d.retry_max {
                        book(&b).fail(format!("{name}: attempt {} past the policy's {}", d.attempt, d.retry_max));
                    }
                    book(&b).note(&name, format!("disconnected: {d:?}"));
                    fresh = false;
                }
                Some(_) => {}
                None => tokio::time::sleep(pause).await,
            },
            () = tokio::time::sleep(pause) => {
                if fresh || !client.is_connected() {
                    continue;
                }
                let now = turmoil::elapsed();
                if now < QUIET {
                    // A request now and then: how a dead link shows.
                    let room = chat.wanted.iter().nth((rng.next() % chat.wanted.len() as u64) as usize).cloned().unwrap_or_default();
                    if rng.next() % 3 == 0 {
                        match ask(&client, &name, &b, ClientMsg::Who { room }).await {
                            Some(_) => misses = 0,
                            None => misses += 1,
                        }
                    } else {
                        let say = chat.say(&room, rng.next());
                        book(&b).note(&name, format!("says {}", say.encode()));
                        let _ = client.send(CHAT, say.encode().into_bytes(), None).await;
                    }
                } else if now >= FINAL && !said_final {
                    said_final = true;
                    for room in chat.wanted.clone() {
                        let say = chat.say(&room, 0);
                        if let ClientMsg::Say { id, .. } = &say {
                            book(&b).finals.insert((name.clone(), *id), room.clone());
                        }
                        book(&b).note(&name, format!("says {}", say.encode()));
                        if let Err(e) = client.send(CHAT, say.encode().into_bytes(), None).await {
                            book(&b).fail(format!("{name}: the last round could not be sent: {e}"));
                        }
                    }
                }
            }
        }
    }
    {
        let mut bk = book(&b);
        if client.is_connected() {
            bk.connected_at_end.insert(name.clone());
        }
        bk.note(&name, "done");
    }
    client.disconnect().await;
    Ok(())
}

/// One run of `seed`; its trace.
fn run(seed: u64) -> Vec<String> {
    let b: Shared = Arc::new(Mutex::new(Book {
        seed,
        ..Book::default()
    }));
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(END + Duration::from_secs(10))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(40))
        .build();
    let sb = Arc::clone(&b);
    sim.host("server", move || server(Arc::clone(&sb)));
    for i in 0..CLIENTS {
        sim.client(format!("c{i}"), client(i, seed, Arc::clone(&b)));
    }
    let cb = Arc::clone(&b);
    sim.client("control", async move {
        tokio::time::sleep(CUT).await;
        book(&cb).note("net", "partition c0, c1 | server");
        turmoil::partition("c0", "server");
        turmoil::partition("c1", "server");
        tokio::time::sleep(HEAL - CUT).await;
        book(&cb).note("net", "repaired");
        turmoil::repair("c0", "server");
        turmoil::repair("c1", "server");
        Ok(())
    });
    if let Err(e) = sim.run() {
        book(&b).fail(format!("the simulation failed: {e}"));
    }
    let bk = book(&b);
    // Everyone is back, and the partitioned clients had to reconnect.
    for i in 0..CLIENTS {
        let name = format!("c{i}");
        if !bk.connected_at_end.contains(&name) {
            bk.fail(format!("{name} is not connected at the end"));
        }
    }
    for name in ["c0", "c1"] {
        if bk.failed.get(name).copied().unwrap_or(0) == 0
            || bk.connects.get(name).copied().unwrap_or(0) < 2
        {
            bk.fail(format!(
                "{name} was cut off yet saw {:?} failed requests and {:?} connections",
                bk.failed.get(name),
                bk.connects.get(name)
            ));
        }
    }
    // The last round reached every member of its room exactly once (twice
    // is caught on receipt) and nobody else (caught on receipt too).
    if bk.finals.is_empty() {
        bk.fail("no last round was said");
    }
    for ((from, id), room) in &bk.finals {
        for i in 0..CLIENTS {
            let name = format!("c{i}");
            let member = rooms_of(i).contains(&room.as_str());
            let got = bk
                .got
                .get(&name)
                .is_some_and(|g| g.contains(&(from.clone(), *id)));
            if member && !got {
                bk.fail(format!(
                    "{name} never got {from}'s last message {id} in {room}"
                ));
            }
        }
    }
    if std::env::var_os("VELTIX_SIM_TRACE").is_some() {
        println!("seed {seed}:\n{}", bk.trace.join("\n"));
    }
    bk.trace.clone()
}

use veltix_sim::seeds_from_env as seeds;

#[test]
fn chat_on_tokio_survives_a_partition_under_turmoil() {
    for seed in seeds(1..=3) {
        let trace = run(seed);
        println!("seed {seed}: {} events", trace.len());
        assert!(
            trace.iter().any(|e| e.contains("link looks dead")),
            "seed {seed}: no client noticed the partition"
        );
    }
}

#[test]
fn the_same_seed_replays_the_same_trace() {
    let seed = seeds([7])[0];
    let first = run(seed);
    let second = run(seed);
    assert!(first.len() > 100, "a real run: {} events", first.len());
    if let Some(i) = (0..first.len().max(second.len())).find(|&i| first.get(i) != second.get(i)) {
        panic!(
            "seed {seed}: the runs differ at event {i}:\n first: {:?}\nsecond: {:?}",
            first.get(i),
            second.get(i)
        );
    }
}
