//! Shared by the Rust tests that drive third-party Python clients: a Python interpreter with
//! tests/compat/requirements.txt installed. `SFSYNC_TEST_PYTHON` (set by scripts/test) wins;
//! otherwise `target/py-venv` is created and filled from PyPI, so plain `cargo test` works too.
//! Included with `#[path = …] mod python_env;`.

use std::path::PathBuf;
use std::process::Command;

/// The workspace root: the nearest ancestor of the current directory (cargo runs tests in the
/// crate's directory) that holds tests/compat/requirements.txt.
pub fn workspace_root() -> PathBuf {
    let mut dir = std::env::current_dir().expect("current directory");
    while !dir.join("tests/compat/requirements.txt").exists() {
        assert!(dir.pop(), "cannot find the workspace root (tests/compat)");
    }
    dir
}

/// A Python with the compat requirements installed (cached per process).
pub fn python() -> PathBuf {
    static PY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PY.get_or_init(|| {
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
    })
    .clone()
}
