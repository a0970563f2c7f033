//! A throwaway Postgres server for tests: `initdb` into a temp dir (as the `postgres` user via
//! `runuser` when running as root), listening on a free loopback port, stopped when the last
//! test holding it drops it. When `SFSYNC_TEST_POSTGRES_URL` is set, that server is used instead.
//! Missing Postgres binaries fail the tests with a clear message; they never pass silently.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};

pub struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres_user: bool,
    pub port: u16,
}

impl PgServer {
    pub fn url(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres",
            self.port
        )
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start() -> PgServer {
        let bin = find_bin_dir().unwrap_or_else(|| {
            panic!(
                "Postgres tests need the Postgres server binaries (initdb, pg_ctl): install them \
                 with `apt-get install -y postgresql` (scripts/test does), set SFSYNC_PG_BIN to \
                 their directory, or set SFSYNC_TEST_POSTGRES_URL to an existing server"
            )
        });
        let as_postgres_user = is_root();
        let dir = tempfile::Builder::new()
            .prefix("sfsync-pg-")
            .tempdir()
            .expect("create temp dir for Postgres");
        if as_postgres_user {
            run(Command::new("chown")
                .arg("-R")
                .arg("postgres:postgres")
                .arg(dir.path()));
        }
        let mut server = PgServer {
            dir,
            bin,
            as_postgres_user,
            port: 0,
        };
        let data = server.data_dir();
        run(server.pg_cmd("initdb").args([
            "-D",
            path_str(&data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]));
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let opts = format!(
                "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off",
                path_str(server.dir.path())
            );
            let log = server.dir.path().join("server.log");
            let out = server
                .pg_cmd("pg_ctl")
                .args([
                    "-D",
                    path_str(&data),
                    "-l",
                    path_str(&log),
                    "-w",
                    "-o",
                    &opts,
                ])
                .arg("start")
                .output()
                .expect("run pg_ctl start");
            if out.status.success() {
                server.port = port;
                return server;
            }
            last_err = format!(
                "{}{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        panic!("could not start a throwaway Postgres server: {last_err}");
    }

    fn pg_cmd(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = self
            .pg_cmd("pg_ctl")
            .args(["-D", path_str(&data), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// The shared throwaway server, started on first use and stopped when the last holder drops it.
pub fn shared_server() -> Arc<PgServer> {
    static SHARED: Mutex<Weak<PgServer>> = Mutex::new(Weak::new());
    let mut guard = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = guard.upgrade() {
        return s;
    }
    let s = Arc::new(PgServer::start());
    *guard = Arc::downgrade(&s);
    s
}

fn find_bin_dir() -> Option<PathBuf> {
    if let Ok(dir) = std::env::var("SFSYNC_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("find a free loopback port")
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A connection config for a fresh schema (its own `search_path`) on the test server
/// (`SFSYNC_TEST_POSTGRES_URL`, or the shared throwaway server, which the returned handle keeps
/// alive), so tests run in parallel without seeing each other.
pub async fn fresh_schema() -> (tokio_postgres::Config, Option<Arc<PgServer>>) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let (url, server) = match std::env::var("SFSYNC_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => (url, None),
        _ => {
            let s = tokio::task::spawn_blocking(shared_server)
                .await
                .expect("start Postgres");
            (s.url(), Some(s))
        }
    };
    let schema = format!(
        "sfsync_test_{}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let mut config: tokio_postgres::Config = url.parse().expect("Postgres URL");
    let (client, conn) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect to the test Postgres server");
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .await
        .expect("create test schema");
    drop(client);
    let _ = task.await;
    config.options(format!("-c search_path={schema}"));
    (config, server)
}
