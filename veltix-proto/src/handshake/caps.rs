//! Capability negotiation in the hello's `meta.caps` (a veltix-rs
//! extension that Python veltix ignores).
//!
//! * The **server** offers, in its hello: `"meta": {"caps": {NAME: {"min": 1, "max": 3, PARAMS...}}}`.
//! * The **client** chooses a subset, in its hello: `"meta": {"caps": {NAME: {"v": 2, PARAMS...}}}`,
//!   the highest version both ranges share.
//! * The **server** confirms the final set in its ack: `"caps": {NAME: {"v": 2}}`.
//!
//! Nothing is active before the ack. No overlap means the feature is off,
//! not an error; unknown capabilities and fields are ignored; no `caps` at
//! all is plain protocol 1.0. Names starting with `rs.` belong to
//! veltix-rs itself (`rs.auth`); an application's own capabilities use any
//! other name (a prefix of its own is wise).

use std::collections::BTreeMap;
use std::ops::RangeInclusive;

use serde_json::{Map, Value};

use crate::auth::Identity;

/// The capability under which authentication is negotiated.
pub const AUTH_CAP: &str = "rs.auth";
/// The prefix reserved for veltix-rs's own capabilities.
pub const RESERVED_PREFIX: &str = "rs.";

/// A capability an application offers (server) or wants (client).
///
/// ```
/// use veltix_proto::handshake::Capability;
/// let c = Capability::new("chat.compression", 1..=2).param("algorithms", ["zstd", "lz4"]);
/// assert_eq!(c.versions(), 1..=2);
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Capability {
    /// The name (not starting with `rs.`, which is reserved).
    pub name: String,
    /// The lowest version this side speaks.
    pub min: u32,
    /// The highest version this side speaks.
    pub max: u32,
    /// Parameters sent with the offer (server) or the choice (client).
    pub params: Map<String, Value>,
}

impl Capability {
    /// A capability spoken in `versions`.
    pub fn new(name: impl Into<String>, versions: RangeInclusive<u32>) -> Self {
        Capability {
            name: name.into(),
            min: *versions.start(),
            max: *versions.end(),
            params: Map::new(),
        }
    }
    /// Adds a parameter.
    pub fn param(mut self, key: impl Into<String>, value: impl Into<Value>) -> Self {
        self.params.insert(key.into(), value.into());
        self
    }
    /// The versions spoken.
    pub fn versions(&self) -> RangeInclusive<u32> {
        self.min..=self.max
    }
    fn is_usable(&self) -> bool {
        self.min <= self.max && !self.name.starts_with(RESERVED_PREFIX)
    }
}

/// A capability both sides agreed on.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Agreed {
    /// The version in use.
    pub version: u32,
    /// The server's parameters (from its offer).
    pub offer: Map<String, Value>,
    /// The client's parameters (from its choice).
    pub choice: Map<String, Value>,
}

/// What the handshake settled: capabilities and the authenticated identity.
///
/// On the server, `identity` is who the client proved to be; on the
/// client, the identity we authenticated as, with `server_verified` true
/// when the server proved it knows our SCRAM verifier.
#[derive(Debug, Clone, PartialEq, Default)]
#[non_exhaustive]
pub struct Negotiated {
    /// Agreed capabilities by name (empty with a plain 1.0 peer).
    pub caps: BTreeMap<String, Agreed>,
    /// The authenticated identity, if any.
    pub identity: Option<Identity>,
    /// Client side: the server proved itself (SCRAM server signature).
    pub server_verified: bool,
}

impl Negotiated {
    /// The agreed version of capability `name`.
    pub fn version(&self, name: &str) -> Option<u32> {
        self.caps.get(name).map(|a| a.version)
    }
    /// Whether capability `name` is active.
    pub fn has(&self, name: &str) -> bool {
        self.caps.contains_key(name)
    }
}

fn as_u32(v: Option<&Value>) -> Option<u32> {
    v.and_then(Value::as_u64)
        .and_then(|n| u32::try_from(n).ok())
}

/// The `caps` object a server offers.
pub(crate) fn offer(caps: &[Capability], auth: Option<Map<String, Value>>) -> Map<String, Value> {
    let mut m = Map::new();
    for c in caps.iter().filter(|c| c.is_usable()) {
        let mut o = c.params.clone();
        o.insert("min".into(), c.min.into());
        o.insert("max".into(), c.max.into());
        m.insert(c.name.clone(), Value::Object(o));
    }
    if let Some(a) = auth {
        m.insert(AUTH_CAP.into(), Value::Object(a));
    }
    m
}

/// `meta.caps` of a hello, when it is an object.
pub(crate) fn caps_of(meta: &Map<String, Value>) -> Option<&Map<String, Value>> {
    meta.get("caps").and_then(Value::as_object)
}

/// The client's choice against the server's offer: for each wanted
/// capability the server offers with an overlapping range, the highest
/// common version. Returns the wire object and the chosen versions.
pub(crate) fn choose(offer: &Map<String, Value>, wanted: &[Capability]) -> Map<String, Value> {
    let mut out = Map::new();
    for c in wanted.iter().filter(|c| c.is_usable()) {
        let Some(o) = offer.get(&c.name).and_then(Value::as_object) else {
            continue;
        };
        let (Some(min), Some(max)) = (as_u32(o.get("min")), as_u32(o.get("max"))) else {
            continue;
        };
        let v = c.max.min(max);
        if v >= c.min.max(min) {
            let mut choice = c.params.clone();
            choice.insert("v".into(), v.into());
            out.insert(c.name.clone(), Value::Object(choice));
        }
    }
    out
}

/// Server side: what the client chose that we offered, in range.
pub(crate) fn confirm(
    offered: &[Capability],
    chosen: &Map<String, Value>,
) -> BTreeMap<String, Agreed> {
    let mut out = BTreeMap::new();
    for c in offered.iter().filter(|c| c.is_usable()) {
        let Some(choice) = chosen.get(&c.name).and_then(Value::as_object) else {
            continue;
        };
        let Some(v) = as_u32(choice.get("v")).filter(|v| c.versions().contains(v)) else {
            continue;
        };
        let mut choice = choice.clone();
        choice.remove("v");
        out.insert(
            c.name.clone(),
            Agreed {
                version: v,
                offer: c.params.clone(),
                choice,
            },
        );
    }
    out
}

/// The `caps` object of an ack.
pub(crate) fn ack_caps(agreed: &BTreeMap<String, Agreed>) -> Map<String, Value> {
    agreed
        .iter()
        .map(|(k, a)| {
            let mut m = Map::new();
            m.insert("v".into(), a.version.into());
            (k.clone(), Value::Object(m))
        })
        .collect()
}

/// Client side: the final set is what the ack confirms, among what we chose.
pub(crate) fn confirmed(
    offer: &Map<String, Value>,
    chosen: &Map<String, Value>,
    ack: Option<&Map<String, Value>>,
) -> BTreeMap<String, Agreed> {
    let mut out = BTreeMap::new();
    let Some(ack) = ack else {
        return out;
    };
    for (name, choice) in chosen {
        let Some(choice) = choice.as_object() else {
            continue;
        };
        let v = as_u32(choice.get("v"));
        let acked = ack
            .get(name)
            .and_then(Value::as_object)
            .and_then(|a| as_u32(a.get("v")));
        if v.is_none() || acked != v {
            continue;
        }
        let mut offer = offer
            .get(name)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default();
        offer.remove("min");
        offer.remove("max");
        let mut choice = choice.clone();
        choice.remove("v");
        out.insert(
            name.clone(),
            Agreed {
                version: v.unwrap_or_default(),
                offer,
                choice,
            },
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn highest_common_version_or_nothing() {
        let server = [
            Capability::new("a", 1..=3).param("x", 1),
            Capability::new("b", 4..=5),
            Capability::new("c", 1..=1),
        ];
        let offer = offer(&server, None);
        let wanted = [
            Capability::new("a", 2..=9),
            Capability::new("b", 1..=3),
            Capability::new("zzz", 1..=1),
        ];
        let chosen = choose(&offer, &wanted);
        assert_eq!(json!(chosen), json!({"a": {"v": 3}}));
        let agreed = confirm(&server, &chosen);
        assert_eq!(agreed["a"].version, 3);
        assert_eq!(
            agreed["a"].offer,
            json!({"x": 1}).as_object().unwrap().clone()
        );
        let ack = ack_caps(&agreed);
        let client_side = confirmed(&offer, &chosen, Some(&ack));
        assert_eq!(client_side.keys().collect::<Vec<_>>(), ["a"]);
        assert_eq!(client_side["a"].offer, agreed["a"].offer);
        assert!(
            confirmed(&offer, &chosen, None).is_empty(),
            "nothing before the ack"
        );
    }

    #[test]
    fn junk_is_ignored_and_rs_names_are_reserved() {
        let offer = json!({"a": {"min": "1", "max": 2}, "b": 7, "c": {"min": 1, "max": 1}, "rs.x": {"min": 1, "max": 1}});
        let wanted = [
            Capability::new("a", 1..=2),
            Capability::new("b", 1..=2),
            Capability::new("c", 1..=1),
            Capability::new("rs.x", 1..=1),
            Capability {
                min: 3,
                max: 1,
                ..Capability::new("d", 1..=1)
            },
        ];
        assert_eq!(
            json!(choose(offer.as_object().unwrap(), &wanted)),
            json!({"c": {"v": 1}})
        );
        let server = [Capability::new("c", 1..=1)];
        let chosen = json!({"c": {"v": 2}});
        assert!(
            confirm(&server, chosen.as_object().unwrap()).is_empty(),
            "out of range"
        );
    }
}
