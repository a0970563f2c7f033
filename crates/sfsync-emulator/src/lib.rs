//! A Salesforce-compatible org served over the same wire protocols as Salesforce: OAuth 2.0 and
//! SOAP login, REST (describe, records, SOQL, Composite), Bulk API 2.0, limits and (with the
//! Pub/Sub issue) Change Data Capture over gRPC. Every DML is a transaction recorded with the
//! metadata CDC needs; Outbound Message rules send SOAP notifications to configured endpoints
//! with Salesforce's retries ([`outbound`]). HTTPS by default with a locally generated CA; plain HTTP only on loopback.
//! Tools connect with nothing but the URL, the CA and `credentials.json`.

pub mod auth;
pub mod bulk;
pub mod cdc;
pub mod config;
pub mod credentials;
pub mod faults;
pub mod grpc;
pub mod http;
pub mod limits;
pub mod load;
pub mod outbound;
pub mod state;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use sfsync_core::SfId;
use sfsync_org::{Org, OrgConfig, Schema};
use tokio::sync::watch;

pub use config::{EmulatorConfig, LimitsConfig};
pub use credentials::Credentials;
pub use state::AppState;

/// A running emulator. Dropping it does not stop the servers; call [`RunningEmulator::shutdown`].
pub struct RunningEmulator {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// `https://127.0.0.1:PORT` (or `http://` with plain HTTP).
    pub base_url: String,
    pub credentials: Credentials,
    pub credentials_path: PathBuf,
    pub ca_pem_path: PathBuf,
    pub state: AppState,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningEmulator {
    pub fn org(&self) -> &Arc<Org> {
        &self.state.org
    }

    /// Stops accepting connections and, with persistence, writes a final org snapshot.
    pub async fn shutdown(self) -> Result<()> {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        if self.state.config.persist {
            self.state
                .org
                .checkpoint()
                .context("writing the final org snapshot")?;
        }
        Ok(())
    }

    /// Stops accepting connections WITHOUT the final org snapshot: the data directory is left
    /// as a crash would leave it, so the next start replays the org journal (tests of recovery).
    pub async fn kill(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

fn load_schema(config: &EmulatorConfig) -> Result<Schema> {
    match &config.schema_file {
        None => Ok(Schema::demo()),
        Some(path) => {
            let mut schema = Schema::standard();
            let custom = Schema::load_file(path)?;
            schema.objects.extend(custom.objects);
            Ok(schema)
        }
    }
}

/// Starts the emulator: creates or loads the data directory, binds the listeners and serves.
pub async fn start(config: EmulatorConfig) -> Result<RunningEmulator> {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    if config.plain_http
        && !(http::is_loopback(&config.http_addr) && http::is_loopback(&config.grpc_addr))
    {
        bail!(
            "--plain-http is only allowed when every listener is on loopback; {} or {} is not",
            config.http_addr,
            config.grpc_addr
        );
    }
    config
        .faults
        .validate()
        .map_err(|e| anyhow::anyhow!("fault configuration: {e}"))?;
    let dir = config.data_dir.clone();
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    let tls_material = tls::load_or_create(&dir)?;
    let secrets = match credentials::load_secrets(&dir)? {
        Some(s) => s,
        None => credentials::Secrets::generate(
            SfId::from_parts("00D", 0x5F5E100 + rand::random::<u32>() as u64).as_str(),
        ),
    };
    let org_id = SfId::parse(&secrets.org_id)
        .with_context(|| format!("org_id in {}", credentials::path(&dir).display()))?;
    let schema = load_schema(&config)?;
    let org_config = OrgConfig {
        org_id,
        admin_username: secrets.username.clone(),
    };
    let org = Arc::new(if config.persist {
        Org::open(schema, org_config, &dir.join("org"))?
    } else {
        Org::new(schema, org_config)
    });

    let http_listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .with_context(|| format!("binding the HTTP listener on {}", config.http_addr))?;
    let http_addr = http_listener.local_addr()?;
    let scheme = if config.plain_http { "http" } else { "https" };
    let host = if http_addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        match http_addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        }
    };
    let base_url = format!("{scheme}://{host}:{}", http_addr.port());
    let grpc_listener = tokio::net::TcpListener::bind(config.grpc_addr)
        .await
        .with_context(|| format!("binding the Pub/Sub gRPC listener on {}", config.grpc_addr))?;
    let grpc_addr = grpc_listener.local_addr()?;
    let cdc_dir = config.persist.then(|| dir.join("cdc"));
    let cdc = cdc::CdcBus::new(config.cdc.clone(), cdc_dir.as_deref())?;
    cdc.attach(&org);

    let outbound = outbound::OutboundMessages::new(&secrets.org_id, &base_url);
    outbound.attach(&org);

    let users = auth_users(&org, &secrets)?;
    let auth = Arc::new(auth::Auth::new(
        org_id,
        auth::ConnectedApp {
            client_id: secrets.client_id.clone(),
            client_secret: secrets.client_secret.clone(),
            jwt_public_key_pem: tls_material.jwt_public_key_pem.clone(),
        },
        users,
        config.session_timeout,
    ));
    auth.add_refresh_token(&secrets.refresh_token, auth.admin().user_id);
    let limits = Arc::new(limits::Limits::new(config.limits.clone()));
    let state = AppState {
        bulk: Arc::new(bulk::BulkJobs::new(org.clone(), limits.clone())),
        org,
        cdc,
        outbound: outbound.clone(),
        auth,
        limits,
        faults: Arc::new(faults::Faults::new(config.faults.clone())),
        config: Arc::new(config.clone()),
        base_url: base_url.clone().into(),
        admin_token: secrets.admin_token.clone().into(),
        query_cursors: Default::default(),
    };

    let creds = Credentials {
        login_url: base_url.clone(),
        instance_url: base_url.clone(),
        pubsub_address: format!("{host}:{}", grpc_addr.port()),
        username: secrets.username.clone(),
        password: secrets.password.clone(),
        security_token: secrets.security_token.clone(),
        client_id: secrets.client_id.clone(),
        client_secret: secrets.client_secret.clone(),
        refresh_token: secrets.refresh_token.clone(),
        org_id: secrets.org_id.clone(),
        admin_token: secrets.admin_token.clone(),
        jwt_private_key_file: tls_material.jwt_private_key_path.display().to_string(),
        ca_file: tls_material.ca_pem_path.display().to_string(),
    };
    let credentials_path = credentials::write(&dir, &creds)?;

    let (tx, rx) = watch::channel(false);
    let tls_config = if config.plain_http {
        None
    } else {
        Some(tls::server_config(&tls_material)?)
    };
    let router = http::router(state.clone());
    let grpc_router =
        tonic::service::Routes::new(grpc::PubSubService::server(state.clone())).into_axum_router();
    let tasks = vec![
        tokio::spawn(http::serve(
            http_listener,
            router,
            tls_config.clone(),
            rx.clone(),
        )),
        tokio::spawn(http::serve(
            grpc_listener,
            grpc_router,
            tls_config,
            rx.clone(),
        )),
        tokio::spawn(outbound.run(rx)),
    ];
    tracing::info!(url = %base_url, "Emulator HTTP listener is up");
    tracing::info!(address = %creds.pubsub_address, "Emulator Pub/Sub gRPC listener is up");
    Ok(RunningEmulator {
        http_addr,
        grpc_addr,
        base_url,
        credentials: creds,
        credentials_path,
        ca_pem_path: tls_material.ca_pem_path.clone(),
        state,
        shutdown: tx,
        tasks,
    })
}

/// The users that can log in: the admin (credentials file) and the integration user.
fn auth_users(org: &Org, secrets: &credentials::Secrets) -> Result<Vec<auth::UserLogin>> {
    let admin = org.admin_user_id();
    let result = org
        .query("SELECT Id, Username, Email FROM User ORDER BY Id", false)
        .map_err(|e| anyhow::anyhow!("listing the org's users: {e}"))?;
    let mut users = vec![auth::UserLogin {
        user_id: admin,
        username: secrets.username.clone(),
        password: secrets.password.clone(),
        security_token: secrets.security_token.clone(),
        full_name: "Emulator Admin".to_string(),
        email: secrets.username.clone(),
    }];
    for (i, id) in result.ids.iter().enumerate() {
        if *id == admin {
            continue;
        }
        let username = result.rows[i][1].as_str().unwrap_or_default().to_string();
        let email = result.rows[i][2].as_str().unwrap_or_default().to_string();
        users.push(auth::UserLogin {
            user_id: *id,
            username,
            password: String::new(),
            security_token: String::new(),
            full_name: "Integration User".to_string(),
            email,
        });
    }
    Ok(users)
}
