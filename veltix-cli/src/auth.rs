//! Authentication options: `serve --auth-file`, the client commands'
//! `--user` / `--token-env`, and `veltix passwd`, which makes the lines of
//! an auth file.
//!
//! An auth file has one entry per line (`#` starts a comment):
//!
//! ```text
//! user  alice       SCRAM-SHA-256$4096:<salt>$<StoredKey>:<ServerKey>
//! token deploy-bot  tok_3f9a...
//! ```
//!
//! Users are stored as SCRAM verifiers (never passwords); tokens as given
//! (keep the file private). Passwords and tokens are read from environment
//! variables or stdin, never from the command line (where `ps` shows them).

use std::io::BufRead;
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use veltix_proto::auth::{ClientAuth, MemoryStore, ScramCredential, ServerAuth, MIN_ITERATIONS};
use veltix_proto::DuplicateIdentity;

use crate::exit::CliError;

/// Client credentials (for `send`, `request`, `ping`).
#[derive(Debug, Clone, Default, Args)]
pub struct ClientAuthArgs {
    /// Authenticate with SCRAM-SHA-256 as this user; the password is read
    /// from the environment variable named by --password-env, else asked
    /// for on the terminal (not echoed).
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Environment variable holding the password for --user.
    #[arg(long, value_name = "VAR", default_value = "VELTIX_PASSWORD")]
    pub password_env: String,
    /// Authenticate with the bearer token held by this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "user")]
    pub token_env: Option<String>,
    /// Refuse a server that does not prove it knows our SCRAM verifier.
    #[arg(long, requires = "user")]
    pub require_server_auth: bool,
}

fn env_secret(var: &str, what: &str) -> Result<String, CliError> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Ok(v),
        _ => Err(CliError::usage(format!(
            "{what}: set the environment variable {var}"
        ))),
    }
}

/// The secret in `var`, else typed at a terminal prompt without echo.
fn env_or_prompt(var: &str, prompt: &str, what: &str) -> Result<String, CliError> {
    use std::io::IsTerminal;
    if let Ok(v) = std::env::var(var) {
        if !v.is_empty() {
            return Ok(v);
        }
    }
    if !std::io::stdin().is_terminal() {
        return Err(CliError::usage(format!(
            "{what}: set the environment variable {var} (no terminal to ask on)"
        )));
    }
    rpassword::prompt_password(prompt)
        .map_err(|e| CliError::failure(format!("cannot read the password: {e}")))
}

impl ClientAuthArgs {
    /// The client's authentication settings, if any were asked for.
    pub fn client_auth(&self) -> Result<Option<ClientAuth>, CliError> {
        if let Some(user) = &self.user {
            let password = env_or_prompt(
                &self.password_env,
                &format!("Password for {user}: "),
                "--user needs a password",
            )?;
            return Ok(Some(
                ClientAuth::scram(user.clone(), password)
                    .require_server_auth(self.require_server_auth),
            ));
        }
        if let Some(var) = &self.token_env {
            return Ok(Some(ClientAuth::bearer(env_secret(var, "--token-env")?)));
        }
        Ok(None)
    }
}

/// What to do with a second connection of one identity (`serve`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Duplicates {
    /// Keep both.
    Allow,
    /// Refuse the newcomer (`identity_in_use`).
    Refuse,
    /// Close the older connection.
    Replace,
}

/// Server authentication (for `serve`).
#[derive(Debug, Clone, Default, Args)]
pub struct ServerAuthArgs {
    /// Require authentication against the users and tokens of this file
    /// (see `veltix passwd`). Python veltix clients are refused with a reason.
    #[arg(long, visible_alias = "users", value_name = "FILE")]
    pub auth_file: Option<PathBuf>,
    /// Offer authentication but let clients without credentials (Python
    /// veltix among them) connect anonymously.
    #[arg(long, requires = "auth_file")]
    pub auth_optional: bool,
    /// A second connection of an authenticated identity.
    #[arg(long, value_enum, requires = "auth_file")]
    pub duplicate_identity: Option<Duplicates>,
}

impl ServerAuthArgs {
    /// The server's policy and store, if `--auth-file` was given.
    pub fn server_auth(&self) -> Result<Option<(ServerAuth, DuplicateIdentity)>, CliError> {
        let Some(path) = &self.auth_file else {
            return Ok(None);
        };
        let store = load(path)?;
        let rule = match self.duplicate_identity {
            None | Some(Duplicates::Allow) => DuplicateIdentity::Allow,
            Some(Duplicates::Refuse) => DuplicateIdentity::Refuse,
            Some(Duplicates::Replace) => DuplicateIdentity::Replace,
        };
        Ok(Some((
            ServerAuth::new(store).required(!self.auth_optional),
            rule,
        )))
    }
}

/// Reads an auth file into a store.
pub fn load(path: &Path) -> Result<MemoryStore, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read {}: {e}", path.display())))?;
    parse(&text).map_err(|e| CliError::usage(format!("{}: {e}", path.display())))
}

/// Parses the text of an auth file.
pub fn parse(text: &str) -> Result<MemoryStore, String> {
    let store = MemoryStore::new();
    let mut entries = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let mut f = line.split_whitespace();
        match (f.next(), f.next(), f.next(), f.next()) {
            (Some("user"), Some(name), Some(verifier), None) => {
                let cred = verifier
                    .parse::<ScramCredential>()
                    .map_err(|e| format!("line {}: {e}", n + 1))?;
                store.insert_user(name, cred);
            }
            (Some("token"), Some(name), Some(token), None) => store.insert_token(name, token),
            _ => {
                return Err(format!(
                    "line {}: expected `user NAME VERIFIER` or `token NAME TOKEN`",
                    n + 1
                ))
            }
        }
        entries += 1;
    }
    if entries == 0 {
        return Err("no users or tokens".into());
    }
    Ok(store)
}

/// Arguments of `veltix passwd`.
#[derive(Debug, Clone, Args)]
pub struct PasswdArgs {
    /// The user name.
    pub user: String,
    /// PBKDF2 iterations: each login costs the client this many (4096 is
    /// the SCRAM minimum; clients accept up to 600 000 by default).
    #[arg(long, default_value_t = MIN_ITERATIONS, value_parser = clap::value_parser!(u32).range(i64::from(MIN_ITERATIONS)..=600_000))]
    pub iterations: u32,
    /// Environment variable holding the password (default: asked twice on
    /// the terminal without echo, or one line read from a non-terminal stdin).
    #[arg(long, value_name = "VAR")]
    pub password_env: Option<String>,
}

/// `veltix passwd`: prints a `user` line for an auth file.
pub fn passwd(args: &PasswdArgs) -> Result<(), CliError> {
    if args.user.is_empty() || args.user.chars().any(char::is_whitespace) {
        return Err(CliError::usage(
            "the user name must be non-empty, without spaces",
        ));
    }
    let password = match &args.password_env {
        Some(var) => env_secret(var, "--password-env")?,
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            let p = rpassword::prompt_password(format!("Password for {}: ", args.user))
                .map_err(|e| CliError::failure(format!("cannot read the password: {e}")))?;
            let again = rpassword::prompt_password("Again: ")
                .map_err(|e| CliError::failure(format!("cannot read the password: {e}")))?;
            if p != again {
                return Err(CliError::usage("the passwords differ"));
            }
            p
        }
        None => {
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(|e| CliError::failure(format!("cannot read the password: {e}")))?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if password.is_empty() {
        return Err(CliError::usage("empty password"));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)
        .map_err(|e| CliError::failure(format!("no randomness from the OS: {e}")))?;
    let cred = ScramCredential::derive(&password, &salt, args.iterations);
    println!("user {} {cred}", args.user);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use veltix_proto::CredentialStore;

    #[test]
    fn auth_files_parse_and_reject_junk() {
        let cred = ScramCredential::derive("pw", b"0123456789abcdef", 4096);
        let text = format!("# users\nuser alice {cred}\n\ntoken bot tok_1 # ci\n");
        let s = parse(&text).unwrap();
        assert_eq!(s.scram_credential("alice"), Some(cred));
        assert_eq!(s.verify_token("tok_1").as_deref(), Some("bot"));
        assert!(parse("").unwrap_err().contains("no users"));
        assert!(parse("user alice notaverifier")
            .unwrap_err()
            .contains("line 1"));
        assert!(parse("token a b c").unwrap_err().contains("line 1"));
        assert!(parse("group x y").is_err());
    }
}
