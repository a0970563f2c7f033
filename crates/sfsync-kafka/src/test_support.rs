//! A real Kafka-protocol broker for integration tests: tansu 0.6 on 127.0.0.1 with its SQLite
//! storage in a directory the test owns, so that a [`Broker::stop`] (SIGKILL, as in a crash) and
//! [`Broker::restart`] keep topics and messages.
//!
//! The binary comes from `SFSYNC_TEST_TANSU` (scripts/test installs tansu and sets it) or from
//! `tansu` on `PATH`. Without either, [`Broker::start`] panics: Kafka tests never skip.
//! tansu does not create topics on first use; create them with
//! [`Admin::ensure_topics`](crate::Admin::ensure_topics). It supports idempotent producers
//! (keeping producer ids and sequence numbers in its storage, so across restarts) and consumer
//! groups, not transactions. Its storage task panics, and every later produce fails with
//! UNKNOWN_SERVER_ERROR until a restart, when a producer bumps its epoch after timed-out records
//! (KIP-360: InitProducerId with an existing producer id is unimplemented in 0.6.0); the
//! [`Producer`](crate::Producer) avoids that by replacing its client after a failed batch.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::KafkaConfig;

/// A tansu broker process (killed when dropped).
pub struct Broker {
    binary: PathBuf,
    dir: PathBuf,
    port: u16,
    /// The port named to clients in metadata (`port` unless a proxy stands in front).
    advertised: u16,
    child: Option<Child>,
}

/// The tansu binary: `$SFSYNC_TEST_TANSU`, else `tansu` on `PATH`; panics with what to do when
/// there is neither.
pub fn tansu_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SFSYNC_TEST_TANSU").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "SFSYNC_TEST_TANSU={} is not a file; run scripts/test, which installs tansu",
            p.display()
        );
        return p;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join("tansu");
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "the Kafka tests need the tansu broker: set SFSYNC_TEST_TANSU to its binary or put \
         `tansu` on PATH (scripts/test installs it with `cargo install tansu@0.6.0 --locked \
         --features libsql`)"
    );
}

impl Broker {
    /// Starts tansu on a free 127.0.0.1 port with its data in `dir/data/tansu.db` (the process
    /// runs in `dir`: tansu resolves the sqlite URL against its working directory) and waits
    /// until the port accepts connections. Its output goes to `dir/tansu.log`.
    pub fn start(dir: &Path) -> Broker {
        let port = free_port();
        Broker::start_on(dir, port, port)
    }

    /// Like [`Broker::start`], but the broker tells clients (in its metadata) to connect to
    /// `127.0.0.1:advertised`, where the test runs a proxy in front of it (for example one that
    /// terminates TLS, which tansu 0.6 does not do itself).
    pub fn start_advertising(dir: &Path, advertised: u16) -> Broker {
        Broker::start_on(dir, free_port(), advertised)
    }

    fn start_on(dir: &Path, port: u16, advertised: u16) -> Broker {
        let binary = tansu_binary();
        std::fs::create_dir_all(dir.join("data")).expect("create the broker's data directory");
        let mut broker = Broker {
            binary,
            dir: dir.to_path_buf(),
            port,
            advertised,
            child: None,
        };
        broker.spawn();
        broker
    }

    /// `127.0.0.1:port`: where the broker listens.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port the broker listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A plaintext client config for this broker.
    pub fn config(&self) -> KafkaConfig {
        KafkaConfig::plaintext(self.bootstrap())
    }

    /// Kills the broker with SIGKILL (no clean shutdown, as in a crash) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the broker again on the same port and data. Stops it first if it runs.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The broker process's id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// The broker's output so far (all runs).
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(self.dir.join("tansu.log")) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = format!("tcp://127.0.0.1:{}", self.advertised);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tansu.log"))
            .expect("open tansu.log");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        // A restart can race the old process's socket teardown; try again until the deadline.
        loop {
            let mut child = Command::new(&self.binary)
                .current_dir(&self.dir)
                .args([
                    "broker",
                    "--listener-url",
                    &url,
                    "--advertised-listener-url",
                    &advertised,
                ])
                .args(["--storage-engine", "sqlite://data/tansu.db"])
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("clone log handle"))
                .stderr(log.try_clone().expect("clone log handle"))
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", self.binary.display()));
            loop {
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    if Instant::now() > deadline {
                        panic!(
                            "tansu on {addr} exited with {status} before accepting \
                             connections; its log ({}):\n{}",
                            self.dir.join("tansu.log").display(),
                            tail(&self.log())
                        );
                    }
                    std::thread::sleep(Duration::from_millis(200));
                    break;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "tansu on {addr} did not accept connections within 30 s; its log:\n{}",
                        tail(&self.log())
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free 127.0.0.1 port")
        .port()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
