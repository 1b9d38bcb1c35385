//! The client's steps: read the server's hello and offer, choose
//! capabilities and a mechanism, answer a SCRAM challenge, check the ack.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::*;

impl Handshake {
    pub(super) fn on_server_hello(
        &mut self,
        body: &[u8],
        send: &mut dyn FnMut(Bytes),
    ) -> Result<Option<Done>, HandshakeError> {
        let m = parse_body(body)?;
        if let Some(reason) = m.get("error") {
            // A server that requires authentication says so to Python
            // clients with `error`; a veltix-rs client reads the offer.
            let requires = m
                .get("meta")
                .and_then(Value::as_object)
                .and_then(caps::caps_of)
                .and_then(|c| c.get(caps::AUTH_CAP))
                .and_then(|a| a.get("required"))
                == Some(&Value::Bool(true));
            if !requires {
                return Err(HandshakeError::Rejected(reason_text(reason)));
            }
        }
        let peer = peer_hello(&m)?;
        let offer = caps::caps_of(&peer.meta).cloned().unwrap_or_default();
        let mut chosen = caps::choose(&offer, &self.caps);
        let auth_offer = offer
            .get(caps::AUTH_CAP)
            .and_then(Value::as_object)
            .filter(|a| {
                let v = |k: &str| a.get(k).and_then(Value::as_u64);
                v("min").is_some_and(|m| m <= 1) && v("max").is_some_and(|m| m >= 1)
            });
        let required = auth_offer.and_then(|a| a.get("required")) == Some(&Value::Bool(true));
        let mechs: Vec<AuthMethod> = auth_offer
            .and_then(|a| a.get("mechs"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .filter_map(AuthMethod::from_wire)
                    .collect()
            })
            .unwrap_or_default();
        let auth = self.client_auth.clone();
        let mut public = chosen.clone();
        let mut step = ClientStep::None;
        match auth.as_ref().and_then(ClientAuth::credentials) {
            Some(Credentials::Scram { user, .. }) if mechs.contains(&AuthMethod::ScramSha256) => {
                let nonce = auth
                    .as_ref()
                    .and_then(ClientAuth::nonce)
                    .ok_or(HandshakeError::NotSeeded)?;
                let (first, msg) = scram::client_first(user, &nonce);
                let mut c = auth_choice(AuthMethod::ScramSha256);
                public.insert(caps::AUTH_CAP.into(), Value::Object(c.clone()));
                c.insert("first".into(), Value::String(msg));
                chosen.insert(caps::AUTH_CAP.into(), Value::Object(c));
                step = ClientStep::ScramFirst(first);
            }
            Some(Credentials::Bearer(token))
                if mechs.contains(&AuthMethod::Bearer)
                    && !auth.as_ref().is_some_and(ClientAuth::requires_server_auth) =>
            {
                let mut c = auth_choice(AuthMethod::Bearer);
                public.insert(caps::AUTH_CAP.into(), Value::Object(c.clone()));
                c.insert("token".into(), Value::String(token.clone()));
                chosen.insert(caps::AUTH_CAP.into(), Value::Object(c));
                step = ClientStep::Bearer;
            }
            _ => {}
        }
        let scram = matches!(step, ClientStep::ScramFirst(_));
        if auth.as_ref().is_some_and(ClientAuth::requires_server_auth) && !scram {
            return Err(HandshakeError::ServerNotAuthenticated);
        }
        if required && matches!(step, ClientStep::None) {
            return Err(HandshakeError::AuthenticationRequired);
        }
        let local = self.local.take().unwrap_or_default();
        send(encode_hello_with(&local, chosen, None));
        self.stage = Stage::AwaitAck(Box::new(ClientWait {
            peer,
            offer,
            chosen: public,
            step,
        }));
        Ok(None)
    }

    pub(super) fn on_ack(
        &mut self,
        mut wait: ClientWait,
        body: &[u8],
        send: &mut dyn FnMut(Bytes),
    ) -> Result<Option<Done>, HandshakeError> {
        let m = parse_body(body).map_err(|e| match e {
            HandshakeError::EmptyObject => HandshakeError::NotAcknowledged("{}".into()),
            e => e,
        })?;
        let is_ack = m.get("result").and_then(Value::as_str) == Some("ok");
        if let (Some(challenge), false) = (m.get("auth").and_then(Value::as_str), is_ack) {
            // The SCRAM challenge (server-first-message).
            let ClientStep::ScramFirst(first) = &wait.step else {
                return Err(HandshakeError::AuthProtocol(
                    "unexpected SCRAM challenge".into(),
                ));
            };
            let auth = self.client_auth.as_ref().ok_or(HandshakeError::NotSeeded)?;
            let Some(Credentials::Scram { password, .. }) = auth.credentials() else {
                return Err(HandshakeError::AuthProtocol("no SCRAM credentials".into()));
            };
            let sf = scram::parse_server_first(first, challenge)
                .map_err(|e| HandshakeError::AuthProtocol(e.0.into()))?;
            if !auth.iteration_range().contains(&sf.iterations) {
                return Err(HandshakeError::IterationsOutOfRange(sf.iterations));
            }
            let salted = auth.salted(password, &sf.salt, sf.iterations);
            let fin = scram::client_final(first, challenge, sf.nonce, &salted);
            let mut reply = Map::new();
            reply.insert("auth".into(), Value::String(fin.message));
            send(encode_object(&reply));
            wait.step = ClientStep::ScramFinal(Box::new(fin.server_signature));
            self.stage = Stage::AwaitAck(Box::new(wait));
            return Ok(None);
        }
        if !is_ack {
            let text = String::from_utf8_lossy(body).into_owned();
            return Err(match m.get("error") {
                Some(Value::String(s)) if s == AUTHENTICATION_FAILED => {
                    HandshakeError::AuthenticationFailed
                }
                Some(Value::String(s)) if s == AUTHENTICATION_REQUIRED => {
                    HandshakeError::AuthenticationRequired
                }
                Some(Value::String(s)) if s == IDENTITY_IN_USE => HandshakeError::IdentityInUse,
                Some(reason) => HandshakeError::Rejected(reason_text(reason)),
                None => HandshakeError::NotAcknowledged(text),
            });
        }
        let acked = m.get("caps").and_then(Value::as_object);
        let caps = caps::confirmed(&wait.offer, &wait.chosen, acked);
        let mut negotiated = Negotiated {
            caps,
            ..Negotiated::default()
        };
        let method = match &wait.step {
            ClientStep::None => None,
            ClientStep::ScramFirst(_) => {
                return Err(HandshakeError::AuthProtocol(
                    "server skipped the SCRAM exchange".into(),
                ))
            }
            ClientStep::ScramFinal(expected) => {
                let ok = m
                    .get("auth")
                    .and_then(Value::as_str)
                    .is_some_and(|v| scram::verify_server_final(expected, v));
                if !ok {
                    return Err(HandshakeError::ServerSignatureMismatch);
                }
                negotiated.server_verified = true;
                Some(AuthMethod::ScramSha256)
            }
            ClientStep::Bearer => Some(AuthMethod::Bearer),
        };
        if let Some(method) = method {
            if !negotiated.has(caps::AUTH_CAP) {
                return Err(HandshakeError::AuthProtocol(
                    "server did not confirm authentication".into(),
                ));
            }
            let name = match (
                m.get("identity").and_then(Value::as_str),
                self.client_auth.as_ref().and_then(ClientAuth::credentials),
            ) {
                (Some(n), _) => n.to_owned(),
                (None, Some(Credentials::Scram { user, .. })) => user.clone(),
                (None, _) => String::new(),
            };
            negotiated.identity = Some(Identity::new(name, method));
        }
        let mut peer = wait.peer;
        peer.negotiated = negotiated;
        Ok(Some(Done { peer, ack: None }))
    }
}
