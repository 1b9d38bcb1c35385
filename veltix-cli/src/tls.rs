//! TLS options of the commands, and throwaway certificates (`veltix demo
//! --tls`, `veltix serve --tls-self-signed`, `veltix bench --tls`).

use std::path::PathBuf;

use clap::Args;
use veltix_tls::{ClientTls, ServerTls, TlsError};

use crate::exit::CliError;

/// TLS options of the client commands.
#[derive(Debug, Clone, Default, Args)]
pub struct ClientTlsArgs {
    /// Connect over TLS (required then: a server that does not speak TLS fails with exit 8).
    #[arg(long)]
    pub tls: bool,
    /// CA certificates (PEM) to trust instead of the built-in public roots.
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub tls_ca: Option<PathBuf>,
    /// The name the server's certificate must carry (default: the host dialled).
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub tls_server_name: Option<String>,
    /// Client certificate chain (PEM) for servers that require one (mutual TLS).
    #[arg(long, value_name = "FILE", requires_all = ["tls", "tls_key"])]
    pub tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires_all = ["tls", "tls_cert"])]
    pub tls_key: Option<PathBuf>,
}

impl ClientTlsArgs {
    /// The TLS config asked for, if any.
    pub fn config(&self) -> Result<Option<ClientTls>, CliError> {
        if !self.tls {
            return Ok(None);
        }
        let mut b = ClientTls::builder();
        b = match &self.tls_ca {
            Some(ca) => b.ca_pem_file(ca).map_err(tls_usage)?,
            None => b.webpki_roots(),
        };
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            b = b.client_cert_pem_files(cert, key).map_err(tls_usage)?;
        }
        if let Some(name) = &self.tls_server_name {
            b = b.server_name(name).map_err(tls_usage)?;
        }
        b.build().map(Some).map_err(tls_usage)
    }
}

/// TLS options of `veltix serve`.
#[derive(Debug, Clone, Default, Args)]
pub struct ServerTlsArgs {
    /// Serve TLS only, with this certificate chain (PEM, end-entity first).
    #[arg(
        long,
        value_name = "FILE",
        requires = "tls_key",
        conflicts_with = "tls_self_signed"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by these CAs (PEM): mutual TLS.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serve TLS only with a throwaway self-signed certificate for localhost
    /// and 127.0.0.1, written to a temporary file (trust it with `--tls-ca`).
    #[arg(long)]
    pub tls_self_signed: bool,
}

impl ServerTlsArgs {
    /// The TLS config asked for, if any, and a line saying what it is.
    pub fn config(&self) -> Result<Option<(ServerTls, String)>, CliError> {
        if self.tls_client_ca.is_some() && self.tls_cert.is_none() && !self.tls_self_signed {
            return Err(CliError::usage(
                "--tls-client-ca needs --tls-cert and --tls-key (or --tls-self-signed)",
            ));
        }
        let mut b = ServerTls::builder();
        let what = if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            b = b.cert_pem_files(cert, key).map_err(tls_usage)?;
            format!("TLS with {}", cert.display())
        } else if self.tls_self_signed {
            let ss = SelfSigned::new()?;
            let path =
                std::env::temp_dir().join(format!("veltix-self-signed-{}.pem", std::process::id()));
            std::fs::write(&path, &ss.cert_pem)
                .map_err(|e| CliError::failure(format!("cannot write {}: {e}", path.display())))?;
            b = b
                .cert_pem(ss.cert_pem.as_bytes(), ss.key_pem.as_bytes())
                .map_err(tls_usage)?;
            format!(
                "TLS with a self-signed certificate for localhost, 127.0.0.1 (trust it: --tls --tls-ca {})",
                path.display()
            )
        } else {
            return Ok(None);
        };
        let what = match &self.tls_client_ca {
            Some(ca) => {
                b = b.client_ca_pem_file(ca).map_err(tls_usage)?;
                format!("{what}, client certificates required ({})", ca.display())
            }
            None => what,
        };
        Ok(Some((b.build().map_err(tls_usage)?, what)))
    }
}

fn tls_usage(e: TlsError) -> CliError {
    CliError::usage(format!("TLS: {e}"))
}

/// A throwaway self-signed certificate for `localhost` and `127.0.0.1`.
pub struct SelfSigned {
    /// The certificate (PEM): also the CA a client trusts.
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
}

impl SelfSigned {
    /// A fresh one (an ECDSA P-256 key).
    pub fn new() -> Result<SelfSigned, CliError> {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
            .map_err(|e| CliError::failure(format!("cannot generate a certificate: {e}")))?;
        Ok(SelfSigned {
            cert_pem: ck.cert.pem(),
            key_pem: ck.key_pair.serialize_pem(),
        })
    }

    /// A server config presenting it, and a client config trusting it.
    pub fn configs(&self) -> Result<(ServerTls, ClientTls), CliError> {
        let server = ServerTls::builder()
            .cert_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
            .and_then(|b| b.build())
            .map_err(|e| CliError::failure(format!("TLS: {e}")))?;
        let client = ClientTls::builder()
            .ca_pem(self.cert_pem.as_bytes())
            .and_then(|b| b.build())
            .map_err(|e| CliError::failure(format!("TLS: {e}")))?;
        Ok((server, client))
    }
}
