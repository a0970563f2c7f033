//! Helpers shared by the end-to-end tests that drive `sfsync` as a child process.

#![allow(dead_code)]

use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test never leaves an
/// orphan `sfsync run` behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// SIGTERM, then waits for the clean stop (exit status 0).
pub fn stop(mut child: KillOnDrop) {
    let pid = child.0.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    let status = child.0.wait().unwrap();
    assert!(status.success(), "sfsync run stopped with {status}");
}

/// Polls `check` (the problems still seen; empty = true) until it holds, or panics after
/// `within` with the first 20 problems.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<String>>,
{
    let deadline = Instant::now() + within;
    loop {
        let problems = check().await;
        if problems.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let mut p = problems;
            p.truncate(20);
            panic!("{what}: still not true after {within:?}:\n{}", p.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
