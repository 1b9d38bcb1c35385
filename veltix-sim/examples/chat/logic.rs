//! The chat service itself: rooms, members, messages. Plain types and
//! functions, with no dependency on veltix or on any simulator: a driver
//! (the simulation in `sim.rs`, or `veltix-tokio` in production) turns
//! connection events and frames into calls of [`ChatServer`] and carries
//! out the [`Action`]s it returns.
//!
//! The wire format is one UTF-8 line per message, fields separated by `|`
//! (the last field, a message's text, may contain `|`).

use std::collections::{BTreeMap, BTreeSet};

/// A connection, as the driver numbers them (unique for the server's lifetime).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conn(pub u64);

/// What a client sends. `Say` is a plain message; the others are requests
/// that get exactly one reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMsg {
    /// "I am `name`" (the first request on every connection).
    Hello { name: String },
    /// Join a room.
    Join { room: String },
    /// Leave a room.
    Leave { room: String },
    /// Who is in a room?
    Who { room: String },
    /// Say `text` in a room; `id` is unique per sender.
    Say { room: String, id: u64, text: String },
}

/// What the server sends: replies name the client they answer (`to`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerMsg {
    /// Reply to `Hello`.
    Welcome { to: String },
    /// Reply to `Join`.
    Joined { to: String, room: String },
    /// Reply to `Leave`.
    Left { to: String, room: String },
    /// Reply to `Who`: the names of the room's members, sorted.
    Members {
        to: String,
        room: String,
        names: Vec<String>,
    },
    /// Reply to a request the server refuses (no `Hello` yet, bad room).
    Refused { to: String, why: String },
    /// A message said in a room, sent to everyone in it (the sender too).
    Said {
        room: String,
        from: String,
        id: u64,
        text: String,
    },
}

/// What the driver must do after [`ChatServer::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Answer the request being handled.
    Reply(ServerMsg),
    /// Send to every connection in the room (`Target::Tag(room)`).
    ToRoom { room: String, msg: ServerMsg },
    /// Mark the connection as a member of the room (a tag), so that room
    /// messages reach it.
    Enter { room: String },
    /// Remove that mark.
    Exit { room: String },
}

#[derive(Debug, Default)]
struct Member {
    name: Option<String>,
    rooms: BTreeSet<String>,
}

/// The server's state: who is connected, under which name, in which rooms.
#[derive(Debug, Default)]
pub struct ChatServer {
    conns: BTreeMap<Conn, Member>,
}

/// Room names: 1 to 32 of `[a-z0-9-]`.
pub fn valid_room(room: &str) -> bool {
    (1..=32).contains(&room.len())
        && room
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl ChatServer {
    /// A new connection finished its handshake.
    pub fn connected(&mut self, conn: Conn) {
        self.conns.insert(conn, Member::default());
    }

    /// A connection went away: it leaves every room.
    pub fn disconnected(&mut self, conn: Conn) {
        self.conns.remove(&conn);
    }

    /// The name a connection said hello with.
    pub fn name(&self, conn: Conn) -> Option<&str> {
        self.conns.get(&conn)?.name.as_deref()
    }

    /// The connections in a room.
    pub fn room(&self, room: &str) -> BTreeSet<Conn> {
        self.conns
            .iter()
            .filter(|(_, m)| m.rooms.contains(room))
            .map(|(&c, _)| c)
            .collect()
    }

    /// A message from `conn`; what to do about it.
    pub fn handle(&mut self, conn: Conn, msg: ClientMsg) -> Vec<Action> {
        let Some(member) = self.conns.get_mut(&conn) else {
            return Vec::new(); // gone already
        };
        let to = member.name.clone().unwrap_or_default();
        let refuse = |to: String, why: &str| {
            vec![Action::Reply(ServerMsg::Refused {
                to,
                why: why.to_owned(),
            })]
        };
        match msg {
            ClientMsg::Hello { name } => {
                if member.name.is_some() {
                    return refuse(to, "hello twice");
                }
                member.name = Some(name.clone());
                vec![Action::Reply(ServerMsg::Welcome { to: name })]
            }
            _ if member.name.is_none() => refuse(to, "say hello first"),
            ClientMsg::Join { room } | ClientMsg::Leave { room } | ClientMsg::Who { room }
                if !valid_room(&room) =>
            {
                refuse(to, "bad room")
            }
            ClientMsg::Join { room } => {
                member.rooms.insert(room.clone());
                vec![
                    Action::Enter { room: room.clone() },
                    Action::Reply(ServerMsg::Joined { to, room }),
                ]
            }
            ClientMsg::Leave { room } => {
                member.rooms.remove(&room);
                vec![
                    Action::Exit { room: room.clone() },
                    Action::Reply(ServerMsg::Left { to, room }),
                ]
            }
            ClientMsg::Who { room } => {
                let names: BTreeSet<String> = self
                    .conns
                    .values()
                    .filter(|m| m.rooms.contains(&room))
                    .filter_map(|m| m.name.clone())
                    .collect();
                vec![Action::Reply(ServerMsg::Members {
                    to,
                    room,
                    names: names.into_iter().collect(),
                })]
            }
            ClientMsg::Say { room, id, text } => {
                if !member.rooms.contains(&room) {
                    return Vec::new(); // not a member: dropped (a plain message gets no reply)
                }
                vec![Action::ToRoom {
                    room: room.clone(),
                    msg: ServerMsg::Said {
                        room,
                        from: to,
                        id,
                        text,
                    },
                }]
            }
        }
    }
}

/// The tag that marks a room's members.
pub fn room_tag(room: &str) -> String {
    format!("room:{room}")
}

// ------------------------------------------------------------------ wire

impl ClientMsg {
    /// One line.
    pub fn encode(&self) -> String {
        match self {
            ClientMsg::Hello { name } => format!("H|{name}"),
            ClientMsg::Join { room } => format!("J|{room}"),
            ClientMsg::Leave { room } => format!("L|{room}"),
            ClientMsg::Who { room } => format!("W|{room}"),
            ClientMsg::Say { room, id, text } => format!("S|{room}|{id}|{text}"),
        }
    }

    /// Parses a line.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(b).ok()?;
        let mut f = s.splitn(4, '|');
        let kind = f.next()?;
        let a = f.next()?.to_owned();
        Some(match kind {
            "H" => ClientMsg::Hello { name: a },
            "J" => ClientMsg::Join { room: a },
            "L" => ClientMsg::Leave { room: a },
            "W" => ClientMsg::Who { room: a },
            "S" => ClientMsg::Say {
                room: a,
                id: f.next()?.parse().ok()?,
                text: f.next()?.to_owned(),
            },
            _ => return None,
        })
    }
}

impl ServerMsg {
    /// One line.
    pub fn encode(&self) -> String {
        match self {
            ServerMsg::Welcome { to } => format!("W|{to}"),
            ServerMsg::Joined { to, room } => format!("J|{to}|{room}"),
            ServerMsg::Left { to, room } => format!("L|{to}|{room}"),
            ServerMsg::Members { to, room, names } => {
                format!("M|{to}|{room}|{}", names.join(","))
            }
            ServerMsg::Refused { to, why } => format!("R|{to}|{why}"),
            ServerMsg::Said {
                room,
                from,
                id,
                text,
            } => format!("S|{room}|{from}|{id}|{text}"),
        }
    }

    /// Parses a line.
    pub fn decode(b: &[u8]) -> Option<Self> {
        let s = std::str::from_utf8(b).ok()?;
        let (kind, rest) = s.split_once('|')?;
        Some(match kind {
            "W" => ServerMsg::Welcome {
                to: rest.to_owned(),
            },
            "J" | "L" | "R" => {
                let (to, x) = rest.split_once('|')?;
                let (to, x) = (to.to_owned(), x.to_owned());
                match kind {
                    "J" => ServerMsg::Joined { to, room: x },
                    "L" => ServerMsg::Left { to, room: x },
                    _ => ServerMsg::Refused { to, why: x },
                }
            }
            "M" => {
                let mut f = rest.splitn(3, '|');
                let to = f.next()?.to_owned();
                let room = f.next()?.to_owned();
                let names = f.next()?;
                let names = if names.is_empty() {
                    Vec::new()
                } else {
                    names.split(',').map(str::to_owned).collect()
                };
                ServerMsg::Members { to, room, names }
            }
            "S" => {
                let mut f = rest.splitn(4, '|');
                ServerMsg::Said {
                    room: f.next()?.to_owned(),
                    from: f.next()?.to_owned(),
                    id: f.next()?.parse().ok()?,
                    text: f.next()?.to_owned(),
                }
            }
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------- client

/// What a chat client wants: its name, the rooms it wants to be in, and
/// what it says. The driver calls it on connection events and replies and
/// sends the requests and messages it returns.
#[derive(Debug)]
pub struct ChatClient {
    /// Its name.
    pub name: String,
    /// Rooms it wants to be in (joined again after every reconnect).
    pub wanted: BTreeSet<String>,
    /// Rooms the server confirmed on this connection.
    pub joined: BTreeSet<String>,
    next_id: u64,
}

impl ChatClient {
    /// A client named `name` that wants to be in `rooms`.
    pub fn new(name: &str, rooms: &[&str]) -> Self {
        ChatClient {
            name: name.to_owned(),
            wanted: rooms.iter().map(|r| (*r).to_owned()).collect(),
            joined: BTreeSet::new(),
            next_id: 0,
        }
    }

    /// A connection is up: the requests to make, in order.
    pub fn on_connected(&mut self) -> Vec<ClientMsg> {
        self.joined.clear();
        vec![ClientMsg::Hello {
            name: self.name.clone(),
        }]
    }

    /// A reply to one of its requests: the follow-up requests.
    pub fn on_reply(&mut self, reply: &ServerMsg) -> Vec<ClientMsg> {
        match reply {
            ServerMsg::Welcome { .. } => self
                .wanted
                .iter()
                .map(|r| ClientMsg::Join { room: r.clone() })
                .collect(),
            ServerMsg::Joined { room, .. } => {
                self.joined.insert(room.clone());
                Vec::new()
            }
            ServerMsg::Left { room, .. } => {
                self.joined.remove(room);
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Something to say in `room` (`n` picks the words).
    pub fn say(&mut self, room: &str, n: u64) -> ClientMsg {
        self.next_id += 1;
        const WORDS: [&str; 8] = [
            "hello", "anyone", "here?", "lunch", "at", "noon", "ok", "|pipes|",
        ];
        let text = (0..3)
            .map(|i| WORDS[((n >> (3 * i)) & 7) as usize])
            .collect::<Vec<_>>()
            .join(" ");
        ClientMsg::Say {
            room: room.to_owned(),
            id: self.next_id,
            text,
        }
    }

    /// Changes its mind about a room: leave it if in, join it if not.
    pub fn toggle(&mut self, room: &str) -> ClientMsg {
        if self.wanted.remove(room) {
            ClientMsg::Leave {
                room: room.to_owned(),
            }
        } else {
            self.wanted.insert(room.to_owned());
            ClientMsg::Join {
                room: room.to_owned(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let c = [
            ClientMsg::Hello { name: "al".into() },
            ClientMsg::Say {
                room: "r".into(),
                id: 7,
                text: "a|b".into(),
            },
            ClientMsg::Who { room: "r".into() },
        ];
        for m in c {
            assert_eq!(ClientMsg::decode(m.encode().as_bytes()), Some(m));
        }
        let s = [
            ServerMsg::Members {
                to: "al".into(),
                room: "r".into(),
                names: vec![],
            },
            ServerMsg::Members {
                to: "al".into(),
                room: "r".into(),
                names: vec!["a".into(), "b".into()],
            },
            ServerMsg::Said {
                room: "r".into(),
                from: "al".into(),
                id: 1,
                text: "x|y".into(),
            },
            ServerMsg::Refused {
                to: String::new(),
                why: "no".into(),
            },
        ];
        for m in s {
            assert_eq!(ServerMsg::decode(m.encode().as_bytes()), Some(m));
        }
    }

    #[test]
    fn rooms_reach_their_members_only() {
        let mut s = ChatServer::default();
        let (a, b) = (Conn(1), Conn(2));
        s.connected(a);
        s.connected(b);
        assert!(matches!(
            s.handle(a, ClientMsg::Join { room: "x".into() })[0],
            Action::Reply(ServerMsg::Refused { .. })
        ));
        s.handle(a, ClientMsg::Hello { name: "a".into() });
        s.handle(b, ClientMsg::Hello { name: "b".into() });
        s.handle(a, ClientMsg::Join { room: "x".into() });
        assert_eq!(s.room("x"), [a].into_iter().collect());
        let out = s.handle(
            a,
            ClientMsg::Say {
                room: "x".into(),
                id: 1,
                text: "hi".into(),
            },
        );
        assert!(matches!(&out[0], Action::ToRoom { room, .. } if room == "x"));
        assert!(s
            .handle(
                b,
                ClientMsg::Say {
                    room: "x".into(),
                    id: 1,
                    text: "hi".into()
                }
            )
            .is_empty());
        s.disconnected(a);
        assert!(s.room("x").is_empty());
    }
}
