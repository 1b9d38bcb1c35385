//! SCRAM-SHA-256 (RFC 5802 with RFC 7677's hash), both ends, on RustCrypto
//! primitives. No channel binding (`n,,`): TLS, when used, is the driver's.
//!
//! The server stores only [`ScramCredential`] (salt, iteration count,
//! `StoredKey`, `ServerKey`); proofs and signatures are compared in constant
//! time; the server's nonce extends the client's; the client checks the
//! server's signature (mutual authentication) and refuses iteration counts
//! outside its configured range.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The smallest iteration count RFC 7677 allows, and the default.
pub const MIN_ITERATIONS: u32 = 4096;

pub(crate) fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length: this cannot fail.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC accepts any key length");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

fn sha256(x: &[u8]) -> [u8; 32] {
    Sha256::digest(x).into()
}

/// `Normalize(password)`: SASLprep when the password is valid for it,
/// else its UTF-8 bytes as they are (as PostgreSQL does).
fn normalize(password: &str) -> Vec<u8> {
    match stringprep::saslprep(password) {
        Ok(p) => p.into_owned().into_bytes(),
        Err(_) => password.as_bytes().to_vec(),
    }
}

/// `SaltedPassword := Hi(Normalize(password), salt, i)`: PBKDF2-HMAC-SHA-256.
pub(crate) fn salted_password(password: &str, salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(&normalize(password), salt, iterations, &mut out);
    out
}

/// What a server stores for one user: never the password.
///
/// Its text form is PostgreSQL's: `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`
/// (base64), so verifiers can be kept in a file.
///
/// ```
/// use veltix_proto::auth::ScramCredential;
/// // The salt must be random per user (16 bytes or more); fixed here for the example.
/// let cred = ScramCredential::derive("pencil", b"0123456789abcdef", 4096);
/// let text = cred.to_string();
/// assert!(text.starts_with("SCRAM-SHA-256$4096:"));
/// assert_eq!(text.parse::<ScramCredential>().unwrap(), cred);
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    salt: Vec<u8>,
    iterations: u32,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// Derives the verifier of `password` with `salt` (random, per user) and
    /// `iterations` (PBKDF2 rounds; each client login costs this many).
    pub fn derive(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = salted_password(password, salt, iterations.max(1));
        Self::from_salted(salt.to_vec(), iterations.max(1), &salted)
    }

    fn from_salted(salt: Vec<u8>, iterations: u32, salted: &[u8; 32]) -> Self {
        let client_key = hmac(salted, &[b"Client Key"]);
        ScramCredential {
            salt,
            iterations,
            stored_key: sha256(&client_key),
            server_key: hmac(salted, &[b"Server Key"]),
        }
    }

    /// The PBKDF2 iteration count.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }
}

impl fmt::Display for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(self.stored_key),
            B64.encode(self.server_key)
        )
    }
}

/// A verifier string that is not `SCRAM-SHA-256$<i>:<salt>$<StoredKey>:<ServerKey>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)")]
pub struct BadVerifier;

impl std::str::FromStr for ScramCredential {
    type Err = BadVerifier;
    fn from_str(s: &str) -> Result<Self, BadVerifier> {
        let rest = s.strip_prefix("SCRAM-SHA-256$").ok_or(BadVerifier)?;
        let (params, keys) = rest.split_once('$').ok_or(BadVerifier)?;
        let (iter, salt) = params.split_once(':').ok_or(BadVerifier)?;
        let (stored, server) = keys.split_once(':').ok_or(BadVerifier)?;
        let key = |k: &str| -> Result<[u8; 32], BadVerifier> {
            B64.decode(k)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v).ok())
                .ok_or(BadVerifier)
        };
        let iterations: u32 = iter.parse().map_err(|_| BadVerifier)?;
        if iterations == 0 {
            return Err(BadVerifier);
        }
        Ok(ScramCredential {
            salt: B64.decode(salt).map_err(|_| BadVerifier)?,
            iterations,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }
}

/// A malformed SCRAM message (the text says which part).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Malformed(pub(crate) &'static str);

/// RFC 5802 §5.1: `=` → `=3D`, `,` → `=2C`.
pub(crate) fn escape_user(user: &str) -> String {
    user.replace('=', "=3D").replace(',', "=2C")
}

fn unescape_user(s: &str) -> Result<String, Malformed> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=3D") => out.push('='),
            Some("=2C") => out.push(','),
            _ => return Err(Malformed("bad escape in user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// `attr=value` at the front of `s`, split at the next comma.
fn attr(s: &str, name: char) -> Result<(&str, &str), Malformed> {
    let (head, tail) = s.split_once(',').unwrap_or((s, ""));
    let value = head
        .strip_prefix(name)
        .and_then(|h| h.strip_prefix('='))
        .ok_or(Malformed("missing attribute"))?;
    Ok((value, tail))
}

fn valid_nonce(n: &str) -> bool {
    !n.is_empty() && n.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

// ------------------------------------------------------------------ client

/// The client's state between its first and final messages.
#[derive(Clone)]
pub(crate) struct ClientFirst {
    nonce: String,
    bare: String,
}

impl fmt::Debug for ClientFirst {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClientFirst")
    }
}

const GS2: &str = "n,,";

/// `client-first-message` for `user` with `nonce` (printable, no comma).
pub(crate) fn client_first(user: &str, nonce: &str) -> (ClientFirst, String) {
    let bare = format!("n={},r={nonce}", escape_user(user));
    let msg = format!("{GS2}{bare}");
    (
        ClientFirst {
            nonce: nonce.to_owned(),
            bare,
        },
        msg,
    )
}

/// The parts of a `server-first-message` a client needs.
pub(crate) struct ServerFirst<'a> {
    pub(crate) nonce: &'a str,
    pub(crate) salt: Vec<u8>,
    pub(crate) iterations: u32,
}

pub(crate) fn parse_server_first<'a>(
    first: &ClientFirst,
    msg: &'a str,
) -> Result<ServerFirst<'a>, Malformed> {
    if msg.starts_with("m=") {
        return Err(Malformed("mandatory extension"));
    }
    let (nonce, rest) = attr(msg, 'r')?;
    if !valid_nonce(nonce) || nonce.len() <= first.nonce.len() || !nonce.starts_with(&first.nonce) {
        return Err(Malformed("server nonce does not extend ours"));
    }
    let (salt, rest) = attr(rest, 's')?;
    let salt = B64.decode(salt).map_err(|_| Malformed("salt"))?;
    let (iter, _extensions) = attr(rest, 'i')?;
    let iterations = iter.parse().map_err(|_| Malformed("iteration count"))?;
    Ok(ServerFirst {
        nonce,
        salt,
        iterations,
    })
}

/// The client's proof and the server signature it expects.
pub(crate) struct ClientFinal {
    pub(crate) message: String,
    pub(crate) server_signature: [u8; 32],
}

/// `client-final-message` from the salted password.
pub(crate) fn client_final(
    first: &ClientFirst,
    server_first_msg: &str,
    nonce: &str,
    salted: &[u8; 32],
) -> ClientFinal {
    let without_proof = format!("c={},r={nonce}", B64.encode(GS2));
    let auth_message = format!("{},{server_first_msg},{without_proof}", first.bare);
    let client_key = hmac(salted, &[b"Client Key"]);
    let stored_key = sha256(&client_key);
    let signature = hmac(&stored_key, &[auth_message.as_bytes()]);
    let mut proof = client_key;
    for (p, s) in proof.iter_mut().zip(signature) {
        *p ^= s;
    }
    let server_key = hmac(salted, &[b"Server Key"]);
    ClientFinal {
        message: format!("{without_proof},p={}", B64.encode(proof)),
        server_signature: hmac(&server_key, &[auth_message.as_bytes()]),
    }
}

/// Checks `server-final-message` (`v=...`) in constant time.
pub(crate) fn verify_server_final(expected: &[u8; 32], msg: &str) -> bool {
    let Some(v) = msg.strip_prefix("v=") else {
        return false;
    };
    let v = v.split(',').next().unwrap_or_default();
    match B64.decode(v) {
        Ok(sig) if sig.len() == 32 => bool::from(sig.ct_eq(expected)),
        _ => false,
    }
}

// ------------------------------------------------------------------ server

/// A parsed `client-first-message`.
pub(crate) struct ClientHello {
    pub(crate) user: String,
    gs2: String,
    bare: String,
    nonce: String,
}

pub(crate) fn parse_client_first(msg: &str) -> Result<ClientHello, Malformed> {
    // gs2-header: "n,," or "y,," (the client supports channel binding but
    // thinks we do not); "p=" asks for a binding we do not offer; no authzid.
    let (gs2, bare) = match msg.get(..3) {
        Some(h @ ("n,," | "y,,")) => (h, &msg[3..]),
        _ => return Err(Malformed("unsupported GS2 header")),
    };
    if bare.starts_with("m=") {
        return Err(Malformed("mandatory extension"));
    }
    let (user, rest) = attr(bare, 'n')?;
    let user = unescape_user(user)?;
    let (nonce, _extensions) = attr(rest, 'r')?;
    if !valid_nonce(nonce) {
        return Err(Malformed("client nonce"));
    }
    Ok(ClientHello {
        user,
        gs2: gs2.to_owned(),
        bare: bare.to_owned(),
        nonce: nonce.to_owned(),
    })
}

/// The server's state between its first message and the client's proof.
#[derive(Clone)]
pub(crate) struct ServerExchange {
    gs2: String,
    bare: String,
    server_first: String,
    nonce: String,
    credential: ScramCredential,
    /// False for an unknown user: the exchange runs to the end and fails,
    /// like a wrong password.
    known: bool,
}

impl fmt::Debug for ServerExchange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerExchange")
    }
}

impl ServerExchange {
    /// Starts the exchange. `credential` is `None` for an unknown user: a
    /// stand-in derived from `secret` and the name (stable per name, so a
    /// prober learns nothing from salts or counts) is used instead.
    pub(crate) fn start(
        hello: &ClientHello,
        credential: Option<ScramCredential>,
        server_nonce: &str,
        secret: &[u8; 32],
        default_iterations: u32,
    ) -> (Self, String) {
        let known = credential.is_some();
        let credential = credential.unwrap_or_else(|| {
            let salt = hmac(secret, &[b"salt", hello.user.as_bytes()]);
            ScramCredential {
                salt: salt[..16].to_vec(),
                iterations: default_iterations,
                stored_key: hmac(secret, &[b"stored", hello.user.as_bytes()]),
                server_key: hmac(secret, &[b"server", hello.user.as_bytes()]),
            }
        });
        let nonce = format!("{}{server_nonce}", hello.nonce);
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&credential.salt),
            credential.iterations
        );
        (
            ServerExchange {
                gs2: hello.gs2.clone(),
                bare: hello.bare.clone(),
                server_first: server_first.clone(),
                nonce,
                credential,
                known,
            },
            server_first,
        )
    }

    /// Checks `client-final-message`. `Ok(server-final-message)` when the
    /// proof is right; `Err` for a wrong proof, an unknown user or a
    /// malformed message alike.
    pub(crate) fn finish(&self, msg: &str) -> Result<String, Malformed> {
        let (binding, rest) = attr(msg, 'c')?;
        let (nonce, rest) = attr(rest, 'r')?;
        let Some(p) = rest
            .rfind("p=")
            .filter(|&i| i == 0 || rest[..i].ends_with(','))
        else {
            return Err(Malformed("missing proof"));
        };
        let proof = B64
            .decode(&rest[p + 2..])
            .map_err(|_| Malformed("proof encoding"))?;
        let without_proof = msg[..msg.len() - (rest.len() - p)].trim_end_matches(',');
        let binding_ok = B64.decode(binding).ok().as_deref() == Some(self.gs2.as_bytes());
        if !binding_ok || nonce != self.nonce || proof.len() != 32 {
            return Err(Malformed("channel binding, nonce or proof length"));
        }
        let auth_message = format!("{},{},{without_proof}", self.bare, self.server_first);
        let signature = hmac(&self.credential.stored_key, &[auth_message.as_bytes()]);
        let mut client_key = [0u8; 32];
        for ((k, p), s) in client_key.iter_mut().zip(&proof).zip(signature) {
            *k = p ^ s;
        }
        let ok = sha256(&client_key).ct_eq(&self.credential.stored_key)
            & subtle::Choice::from(u8::from(self.known));
        if !bool::from(ok) {
            return Err(Malformed("proof"));
        }
        let sig = hmac(&self.credential.server_key, &[auth_message.as_bytes()]);
        Ok(format!("v={}", B64.encode(sig)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7677 §3.
    const USER: &str = "user";
    const PASSWORD: &str = "pencil";
    const CNONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SNONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn rfc_credential() -> ScramCredential {
        ScramCredential::derive(
            PASSWORD,
            &B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap(),
            4096,
        )
    }

    #[test]
    fn rfc7677_client_side() {
        let (first, msg) = client_first(USER, CNONCE);
        assert_eq!(msg, "n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        let sf = parse_server_first(&first, SERVER_FIRST).unwrap();
        assert_eq!(sf.iterations, 4096);
        let salted = salted_password(PASSWORD, &sf.salt, sf.iterations);
        let fin = client_final(&first, SERVER_FIRST, sf.nonce, &salted);
        assert_eq!(fin.message, CLIENT_FINAL);
        assert!(verify_server_final(&fin.server_signature, SERVER_FINAL));
        assert!(!verify_server_final(&fin.server_signature, "v=AAAA"));
        assert!(!verify_server_final(&[0; 32], SERVER_FINAL));
    }

    #[test]
    fn rfc7677_server_side() {
        let hello = parse_client_first("n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(hello.user, "user");
        let (ex, first) =
            ServerExchange::start(&hello, Some(rfc_credential()), SNONCE, &[7; 32], 4096);
        assert_eq!(first, SERVER_FIRST);
        assert_eq!(ex.finish(CLIENT_FINAL).unwrap(), SERVER_FINAL);
        // One flipped bit of the proof fails.
        let bad = CLIENT_FINAL.replace("p=dHz", "p=dHy");
        assert!(ex.finish(&bad).is_err());
        // Another nonce fails.
        assert!(ex.finish(&CLIENT_FINAL.replace("k0,p", "k1,p")).is_err());
    }

    #[test]
    fn unknown_user_fails_at_the_proof_with_stable_salt() {
        let hello = parse_client_first("n,,n=nobody,r=abc").unwrap();
        let (ex, first) = ServerExchange::start(&hello, None, "xyz", &[1; 32], 4096);
        let (_, again) = ServerExchange::start(&hello, None, "xyz", &[1; 32], 4096);
        assert_eq!(first, again, "same stand-in salt for the same name");
        // Even a client that knows the stand-in's "password" fails: there is none.
        let (cf, _) = client_first("nobody", "abc");
        let sf = parse_server_first(&cf, &first).unwrap();
        let salted = salted_password("", &sf.salt, sf.iterations);
        let fin = client_final(&cf, &first, sf.nonce, &salted);
        assert!(ex.finish(&fin.message).is_err());
    }

    #[test]
    fn user_names_are_escaped() {
        assert_eq!(escape_user("a=b,c"), "a=3Db=2Cc");
        let (_, msg) = client_first("a=b,c", "n");
        let hello = parse_client_first(&msg).unwrap();
        assert_eq!(hello.user, "a=b,c");
        assert!(parse_client_first("n,,n=a=4,r=x").is_err());
        assert!(parse_client_first("p=tls-unique,,n=a,r=x").is_err());
        assert!(parse_client_first("n,a=admin,n=a,r=x").is_err());
    }

    #[test]
    fn server_nonce_must_extend_ours() {
        let (cf, _) = client_first("u", "abc");
        assert!(parse_server_first(&cf, "r=abc,s=AAAA,i=4096").is_err());
        assert!(parse_server_first(&cf, "r=xyzabc1,s=AAAA,i=4096").is_err());
        assert!(parse_server_first(&cf, "m=x,r=abc1,s=AAAA,i=4096").is_err());
        assert!(parse_server_first(&cf, "r=abc1,s=AAAA,i=-1").is_err());
        assert!(parse_server_first(&cf, "r=abc1,s=AAAA,i=4096").is_ok());
    }

    #[test]
    fn verifier_text_round_trips_and_rejects_junk() {
        let c = rfc_credential();
        assert_eq!(c.to_string().parse::<ScramCredential>().unwrap(), c);
        for bad in [
            "",
            "SCRAM-SHA-256$",
            "SCRAM-SHA-256$0:AA==$AA==:AA==",
            "MD5$x",
        ] {
            assert!(bad.parse::<ScramCredential>().is_err(), "{bad}");
        }
        assert!(!format!("{c:?}").contains("stored"));
    }
}
