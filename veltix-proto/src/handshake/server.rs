//! The server's steps: read the client's hello and choice, verify a
//! token or run SCRAM, acknowledge or refuse.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::*;

impl Handshake {
    pub(super) fn on_client_hello(
        &mut self,
        body: &[u8],
        send: &mut dyn FnMut(Bytes),
    ) -> Result<Option<Done>, HandshakeError> {
        let mut peer = peer_hello(&parse_body(body)?)?;
        let chosen = caps::caps_of(&peer.meta).cloned().unwrap_or_default();
        // The application sees the client's meta, never its secrets.
        if let Some(Value::Object(a)) = peer
            .meta
            .get_mut("caps")
            .and_then(Value::as_object_mut)
            .and_then(|c| c.get_mut(caps::AUTH_CAP))
        {
            a.remove("token");
            a.remove("first");
        }
        let mut agreed = caps::confirm(&self.caps, &chosen);
        let Some(auth) = self.server_auth.clone() else {
            peer.negotiated.caps = agreed;
            return Ok(Some(self.ack(peer, None)));
        };
        let choice = chosen
            .get(caps::AUTH_CAP)
            .and_then(Value::as_object)
            .filter(|c| c.get("v").and_then(Value::as_u64) == Some(1));
        let Some(choice) = choice else {
            if auth.is_required() {
                return Err(self.fail(HandshakeError::AuthenticationRequired, send));
            }
            peer.negotiated.caps = agreed;
            return Ok(Some(self.ack(peer, None)));
        };
        let mech = choice
            .get("mech")
            .and_then(Value::as_str)
            .and_then(AuthMethod::from_wire)
            .filter(|m| auth.offered().contains(m));
        let mut public = Map::new();
        public.insert(
            "mech".into(),
            Value::String(mech.map_or("", AuthMethod::as_str).into()),
        );
        agreed.insert(
            caps::AUTH_CAP.into(),
            Agreed {
                version: 1,
                offer: Map::new(),
                choice: public,
            },
        );
        match mech {
            Some(AuthMethod::Bearer) => {
                let token = choice
                    .get("token")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                match auth.store().verify_token(token) {
                    Some(name) => {
                        peer.negotiated.caps = agreed;
                        peer.negotiated.identity = Some(Identity::new(name, AuthMethod::Bearer));
                        Ok(Some(self.ack(peer, None)))
                    }
                    None => Err(self.fail(HandshakeError::AuthenticationFailed, send)),
                }
            }
            Some(AuthMethod::ScramSha256) => {
                let first = choice
                    .get("first")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let Ok(hello) = scram::parse_client_first(first) else {
                    return Err(self.fail(HandshakeError::AuthenticationFailed, send));
                };
                let (Some(nonce), Some(secret)) = (auth.nonce(), auth.secret()) else {
                    tracing::error!("SCRAM refused: the server's nonce generator was never seeded");
                    return Err(self.fail(HandshakeError::NotSeeded, send));
                };
                let credential = auth.store().scram_credential(&hello.user);
                let (exchange, server_first) = scram::ServerExchange::start(
                    &hello,
                    credential,
                    &nonce,
                    &secret,
                    auth.unknown_iterations(),
                );
                let mut m = Map::new();
                m.insert("auth".into(), Value::String(server_first));
                send(encode_object(&m));
                self.stage = Stage::AwaitClientFinal(Box::new(ServerWait {
                    peer,
                    agreed,
                    exchange,
                    user: hello.user,
                }));
                Ok(None)
            }
            _ => Err(self.fail(HandshakeError::AuthenticationFailed, send)),
        }
    }

    pub(super) fn on_client_final(
        &mut self,
        wait: ServerWait,
        body: &[u8],
        send: &mut dyn FnMut(Bytes),
    ) -> Result<Option<Done>, HandshakeError> {
        let m = parse_body(body)?;
        let proof = m.get("auth").and_then(Value::as_str).unwrap_or_default();
        match wait.exchange.finish(proof) {
            Ok(server_final) => {
                let mut peer = wait.peer;
                peer.negotiated.caps = wait.agreed;
                peer.negotiated.identity = Some(Identity::new(wait.user, AuthMethod::ScramSha256));
                Ok(Some(self.ack(peer, Some(server_final))))
            }
            Err(_) => Err(self.fail(HandshakeError::AuthenticationFailed, send)),
        }
    }

    /// Sends the server's refusal and returns the error.
    pub(super) fn fail(
        &mut self,
        e: HandshakeError,
        send: &mut dyn FnMut(Bytes),
    ) -> HandshakeError {
        tracing::debug!(error = %e, "handshake refused");
        send(encode_rejection(wire_error(&e)));
        e
    }

    /// The ack for `peer` (byte-exact `{"result": "ok"}` for a plain peer).
    pub(super) fn ack(&self, peer: PeerHello, server_final: Option<String>) -> Done {
        let n = &peer.negotiated;
        let ack = if n.caps.is_empty() && n.identity.is_none() {
            encode_ack()
        } else {
            let mut m = Map::new();
            m.insert("result".into(), Value::String("ok".into()));
            m.insert("caps".into(), Value::Object(caps::ack_caps(&n.caps)));
            if let Some(id) = &n.identity {
                m.insert("identity".into(), Value::String(id.name.clone()));
            }
            if let Some(v) = server_final {
                m.insert("auth".into(), Value::String(v));
            }
            encode_object(&m)
        };
        Done {
            peer,
            ack: Some(ack),
        }
    }
}
