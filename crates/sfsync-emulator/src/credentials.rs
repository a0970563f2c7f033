//! The credentials file a tool needs to connect (`DIR/credentials.json`). Secrets are generated
//! once and kept across restarts; URLs are rewritten at each start because ports may change.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::distr::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Everything a client needs to connect to the emulator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Credentials {
    pub login_url: String,
    pub instance_url: String,
    /// `host:port` of the Pub/Sub gRPC endpoint (TLS with the same CA).
    pub pubsub_address: String,
    pub username: String,
    pub password: String,
    pub security_token: String,
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    pub org_id: String,
    /// Bearer token of the emulator's admin API (`/admin/...`).
    pub admin_token: String,
    /// PKCS#8 RSA private key whose certificate the connected app trusts (JWT bearer flow).
    pub jwt_private_key_file: String,
    /// The CA that signed the emulator's server certificate.
    pub ca_file: String,
}

fn random(n: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(n)
        .map(char::from)
        .collect()
}

/// Secrets that persist across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Secrets {
    pub org_id: String,
    pub username: String,
    pub password: String,
    pub security_token: String,
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    pub admin_token: String,
}

impl Secrets {
    /// Fresh secrets for a new org with id `org_id`.
    pub fn generate(org_id: &str) -> Secrets {
        Secrets {
            org_id: org_id.to_string(),
            username: "admin@sfsync-emulator.example".to_string(),
            password: random(20),
            security_token: random(24),
            client_id: format!("3MVG9{}", random(80)),
            client_secret: random(64),
            refresh_token: format!("5Aep861{}", random(80)),
            admin_token: random(40),
        }
    }
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join("credentials.json")
}

/// Reads the secrets of an earlier start, if any.
pub fn load_secrets(dir: &Path) -> Result<Option<Secrets>> {
    let p = path(dir);
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    let c: Credentials = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a valid credentials file", p.display()))?;
    Ok(Some(Secrets {
        org_id: c.org_id,
        username: c.username,
        password: c.password,
        security_token: c.security_token,
        client_id: c.client_id,
        client_secret: c.client_secret,
        refresh_token: c.refresh_token,
        admin_token: c.admin_token,
    }))
}

/// Writes `credentials.json` readable only by its owner.
pub fn write(dir: &Path, c: &Credentials) -> Result<PathBuf> {
    let p = path(dir);
    let tmp = dir.join("credentials.json.tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(c)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::rename(&tmp, &p).with_context(|| format!("writing {}", p.display()))?;
    Ok(std::fs::canonicalize(&p).unwrap_or(p))
}
