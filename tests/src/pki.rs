//! Throwaway certificates for the TLS tests (rcgen): a CA, server and
//! client certificates it signs, an expired one; and the `ServerTls` /
//! `ClientTls` of `veltix-tls` built from their PEM, as an application would.

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use veltix_tls::{ClientTls, ServerTls};

/// The CN of every server certificate made here.
pub const SERVER_CN: &str = "veltix-test-server";

/// A certificate and its key, in PEM.
#[derive(Debug, Clone)]
pub struct Issued {
    /// The certificate (PEM).
    pub cert: String,
    /// Its private key (PEM).
    pub key: String,
}

/// A test CA.
pub struct Pki {
    /// The CA certificate (PEM): what a peer trusts.
    pub ca_pem: String,
    ca: Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Pki {
        let key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = p.self_signed(&key).expect("CA certificate");
        Pki {
            ca_pem: ca.pem(),
            ca,
            key,
        }
    }

    fn issue(&self, cn: &str, sans: &[&str], server: bool, expired: bool) -> Issued {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("params");
        p.distinguished_name = DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        if expired {
            p.not_before = rcgen::date_time_ymd(2020, 1, 1);
            p.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = p.signed_by(&key, &self.ca, &self.key).expect("sign");
        Issued {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for `localhost` and `127.0.0.1` (CN [`SERVER_CN`]).
    pub fn server_cert(&self) -> Issued {
        self.issue(SERVER_CN, &["localhost", "127.0.0.1"], true, false)
    }

    /// The same, expired since 2021.
    pub fn expired_server_cert(&self) -> Issued {
        self.issue(SERVER_CN, &["localhost", "127.0.0.1"], true, true)
    }

    /// A client certificate with this CN.
    pub fn client_cert(&self, cn: &str) -> Issued {
        self.issue(cn, &[], false, false)
    }

    /// A TLS server config with a certificate of this CA.
    pub fn server_tls(&self) -> ServerTls {
        server_tls(&self.server_cert(), None)
    }

    /// A TLS client config that trusts this CA (no client certificate).
    pub fn client_tls(&self) -> ClientTls {
        ClientTls::builder()
            .ca_pem(self.ca_pem.as_bytes())
            .expect("CA PEM")
            .build()
            .expect("client TLS")
    }

    /// A TLS client config that trusts this CA and presents `cert`.
    pub fn client_tls_with(&self, cert: &Issued) -> ClientTls {
        ClientTls::builder()
            .ca_pem(self.ca_pem.as_bytes())
            .expect("CA PEM")
            .client_cert_pem(cert.cert.as_bytes(), cert.key.as_bytes())
            .expect("client cert PEM")
            .build()
            .expect("client TLS")
    }
}

/// A TLS server config presenting `cert`; with `client_ca`, client
/// certificates signed by it are required (mutual TLS).
pub fn server_tls(cert: &Issued, client_ca: Option<&Pki>) -> ServerTls {
    let mut b = ServerTls::builder()
        .cert_pem(cert.cert.as_bytes(), cert.key.as_bytes())
        .expect("server PEM");
    if let Some(ca) = client_ca {
        b = b
            .client_ca_pem(ca.ca_pem.as_bytes())
            .expect("client CA PEM");
    }
    b.build().expect("server TLS")
}

/// The first bytes of a real TLS ClientHello for `localhost` (its record
/// header and part of its body): what a peer that stalls mid-handshake sends.
pub fn partial_client_hello(pki: &Pki) -> Vec<u8> {
    let mut conn = pki
        .client_tls()
        .new_connection("localhost")
        .expect("client connection");
    let mut hello = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut hello).expect("write to a Vec");
    }
    hello.truncate(hello.len() / 2);
    hello
}
