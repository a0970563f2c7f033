//! Third-party client compatibility: unmodified Python libraries (pinned in
//! tests/compat/requirements.txt) run against a live emulator over HTTPS on loopback. The only
//! differences from real Salesforce are the URL and the CA they trust.
//!
//! The Python interpreter comes from `SFSYNC_TEST_PYTHON` (scripts/test prepares a virtualenv);
//! without it the test prepares `target/py-venv` itself, so plain `cargo test` works too.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// A Python with the compat requirements installed.
fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SFSYNC_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let root = workspace_root();
    let venv = root.join("target/py-venv");
    let py = venv.join("bin/python");
    if !py.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .expect("python3 must be installed (scripts/test installs it)");
        assert!(ok.success(), "creating {} failed", venv.display());
    }
    let ok = Command::new(&py)
        .args([
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(root.join("tests/compat/requirements.txt"))
        .status()
        .expect("running pip");
    assert!(
        ok.success(),
        "installing tests/compat/requirements.txt failed"
    );
    py
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_salesforce_works_against_the_emulator() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let running = sfsync_emulator::start(sfsync_emulator::EmulatorConfig::ephemeral(dir.path()))
        .await
        .unwrap();
    let py = python();
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
