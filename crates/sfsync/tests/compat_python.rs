//! Third-party client compatibility: unmodified Python libraries (pinned in
//! tests/compat/requirements.txt) run against a live emulator over HTTPS on loopback. The only
//! differences from real Salesforce are the URL and the CA they trust.
//!
//! The Python interpreter comes from `SFSYNC_TEST_PYTHON` (scripts/test prepares a virtualenv);
//! without it the test prepares `target/py-venv` itself, so plain `cargo test` works too.

use std::process::Command;

#[path = "../../../tests/compat/python_env.rs"]
mod python_env;

use python_env::{python, workspace_root};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_salesforce_works_against_the_emulator() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let running = sfsync_emulator::start(sfsync_emulator::EmulatorConfig::ephemeral(dir.path()))
        .await
        .unwrap();
    let py = tokio::task::spawn_blocking(python).await.unwrap();
    let script = workspace_root().join("tests/compat/simple_salesforce_check.py");
    let creds = running.credentials_path.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(py)
            .arg(script)
            .arg(creds)
            .output()
            .expect("running python")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "simple-salesforce check failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains("all checks passed"), "{stdout}");
    running.shutdown().await.unwrap();
}
