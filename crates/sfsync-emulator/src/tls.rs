//! TLS material of the emulator: on first start it creates a CA and a server certificate for
//! `localhost`, `127.0.0.1` and `::1` signed by it, plus an RSA key pair and certificate for the
//! connected app's JWT bearer flow; later starts reuse them so clients trust the CA once.
//! Files (in the data directory): `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem`,
//! `jwt-key.pem` (private, PKCS#8), `jwt-cert.pem`, `jwt-public.pem`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Paths and PEM texts of the emulator's TLS and JWT material.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub ca_pem_path: PathBuf,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub jwt_private_key_path: PathBuf,
    pub jwt_public_key_pem: String,
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("restricting permissions of {}", path.display()))?;
    }
    Ok(())
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Loads the material from `dir`, creating whatever is missing.
pub fn load_or_create(dir: &Path) -> Result<TlsMaterial> {
    let ca_path = dir.join("ca.pem");
    let ca_key_path = dir.join("ca-key.pem");
    let server_path = dir.join("server.pem");
    let server_key_path = dir.join("server-key.pem");
    if !(ca_path.exists()
        && ca_key_path.exists()
        && server_path.exists()
        && server_key_path.exists())
    {
        let (ca_pem, ca_key_pem, server_pem, server_key_pem) = generate_ca_and_server()?;
        std::fs::write(&ca_path, ca_pem)
            .with_context(|| format!("writing {}", ca_path.display()))?;
        write_private(&ca_key_path, &ca_key_pem)?;
        std::fs::write(&server_path, server_pem)
            .with_context(|| format!("writing {}", server_path.display()))?;
        write_private(&server_key_path, &server_key_pem)?;
    }
    let jwt_key_path = dir.join("jwt-key.pem");
    let jwt_cert_path = dir.join("jwt-cert.pem");
    let jwt_pub_path = dir.join("jwt-public.pem");
    if !(jwt_key_path.exists() && jwt_pub_path.exists()) {
        let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
            .context("generating the connected app's RSA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = dn("sfsync emulator connected app");
        let cert = params.self_signed(&key)?;
        write_private(&jwt_key_path, &key.serialize_pem())?;
        std::fs::write(&jwt_cert_path, cert.pem())?;
        std::fs::write(&jwt_pub_path, key.public_key_pem())?;
    }
    Ok(TlsMaterial {
        ca_pem_path: std::fs::canonicalize(&ca_path).unwrap_or(ca_path),
        server_cert_pem: read(&server_path)?,
        server_key_pem: read(&server_key_path)?,
        jwt_private_key_path: std::fs::canonicalize(&jwt_key_path).unwrap_or(jwt_key_path),
        jwt_public_key_pem: read(&jwt_pub_path)?,
    })
}

fn dn(cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::CommonName, cn);
    d.push(DnType::OrganizationName, "sfsync emulator");
    d
}

/// A fresh CA and a server certificate signed by it (PEM texts).
fn generate_ca_and_server() -> Result<(String, String, String, String)> {
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = dn("sfsync emulator local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let server_key = KeyPair::generate().context("generating the server key")?;
    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    params.distinguished_name = dn("localhost");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let issuer = Issuer::from_params(&ca_params, &ca_key);
    let server_cert = params.signed_by(&server_key, &issuer)?;
    Ok((
        ca_cert.pem(),
        ca_key.serialize_pem(),
        server_cert.pem(),
        server_key.serialize_pem(),
    ))
}

/// A rustls server configuration with ALPN h2 + http/1.1 (gRPC needs h2).
pub fn server_config(m: &TlsMaterial) -> Result<Arc<rustls::ServerConfig>> {
    let certs = rustls_pemfile::certs(&mut m.server_cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("parsing server.pem")?;
    let key = rustls_pemfile::private_key(&mut m.server_key_pem.as_bytes())
        .context("parsing server-key.pem")?
        .ok_or_else(|| anyhow!("server-key.pem holds no private key"))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .context("building the TLS server configuration")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path()).unwrap();
        let b = load_or_create(dir.path()).unwrap();
        assert_eq!(a.server_cert_pem, b.server_cert_pem);
        assert_eq!(a.jwt_public_key_pem, b.jwt_public_key_pem);
        assert!(a.jwt_public_key_pem.contains("BEGIN PUBLIC KEY"));
        server_config(&a).unwrap();
    }
}
