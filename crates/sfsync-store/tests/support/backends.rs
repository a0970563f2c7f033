//! Two stores behind one interface for tests that run on both backends: a SQLite file in a
//! temp dir and a fresh Postgres schema, each with PII keyring `k1` ([7; 32]).

#![allow(dead_code)]

use std::sync::Arc;

use async_trait::async_trait;
use sfsync_store::{Keyring, PostgresChangeLog, SqliteChangeLog, Warehouse};

#[async_trait]
pub trait Backend: Send + Sync {
    async fn open(&self) -> Box<dyn Warehouse>;
}

pub struct SqliteBackend {
    pub dir: tempfile::TempDir,
}

#[async_trait]
impl Backend for SqliteBackend {
    async fn open(&self) -> Box<dyn Warehouse> {
        let s = SqliteChangeLog::open(self.dir.path().join("wh.db"))
            .await
            .expect("open SQLite store");
        s.set_keyring(Some(Arc::new(Keyring::new("k1", [7; 32]))));
        Box::new(s)
    }
}

pub struct PostgresBackend {
    config: tokio_postgres::Config,
    _server: Option<Arc<super::pg::PgServer>>,
}

#[async_trait]
impl Backend for PostgresBackend {
    async fn open(&self) -> Box<dyn Warehouse> {
        let s = PostgresChangeLog::connect_with(&self.config)
            .await
            .expect("connect to Postgres store");
        s.set_keyring(Some(Arc::new(Keyring::new("k1", [7; 32]))));
        Box::new(s)
    }
}

pub fn sqlite_backend() -> SqliteBackend {
    SqliteBackend {
        dir: tempfile::tempdir().expect("temp dir"),
    }
}

pub async fn postgres_backend() -> PostgresBackend {
    let (config, server) = super::pg::fresh_schema().await;
    PostgresBackend {
        config,
        _server: server,
    }
}
