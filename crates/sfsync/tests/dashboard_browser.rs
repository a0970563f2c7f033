//! The dashboard in a real browser: `sfsync demo` runs as a child process (embedded emulator,
//! live traffic, the API and the dashboard on loopback), and `tests/browser/dashboard.mjs`
//! drives headless Chromium (Debian's `chromium`, through `playwright-core`) against it:
//! sign-in, every page without console errors, the overview's figures against the API, the
//! integration map's edges, and redrive / release / resolve done by clicking, checked in the
//! API. Screenshots are kept in `target/browser-artifacts/`.
//!
//! Needs node, `/usr/bin/chromium` (or `SFSYNC_CHROMIUM`) and `tests/browser/node_modules`;
//! `scripts/test` installs them. Without them this test fails and says so (it never skips).

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value as J;
use support::{wait_for, KillOnDrop};

/// How long the demo may take to write `dashboard.url`.
const URL_WITHIN: Duration = Duration::from_secs(120);
/// How long the demo's traffic may take to produce a quarantined change, a dead letter and
/// a conflict.
const ITEMS_WITHIN: Duration = Duration::from_secs(180);
/// The browser script's own bound (each of its steps has a shorter one).
const BROWSER_WITHIN: Duration = Duration::from_secs(600);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root")
}

/// What the browser run needs and is missing, each with how to get it.
fn missing_prerequisites(browser_dir: &Path) -> Vec<String> {
    let mut missing = Vec::new();
    match Command::new("node").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        _ => missing.push("node (Debian package nodejs) is not on PATH".to_string()),
    }
    let chromium = std::env::var_os("SFSYNC_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        missing.push(format!(
            "{} does not exist (Debian package chromium)",
            chromium.display()
        ));
    }
    if !browser_dir
        .join("node_modules/playwright-core/package.json")
        .exists()
    {
        missing.push(format!(
            "{}/node_modules has no playwright-core (npm ci in tests/browser)",
            browser_dir.display()
        ));
    }
    missing
}

fn file_text(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| format!("(cannot read {}: {e})", p.display()))
}

/// The tail of the demo's output, for a failure message.
fn tail(p: &Path) -> String {
    let t = file_text(p);
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_works_in_headless_chromium_against_the_demo() {
    let root = repo_root();
    let browser_dir = root.join("tests/browser");
    let missing = missing_prerequisites(&browser_dir);
    assert!(
        missing.is_empty(),
        "the browser test cannot run: {}. Run scripts/test (it installs Debian's chromium and \
         runs npm ci in tests/browser), or install them by hand.",
        missing.join("; ")
    );

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("demo");
    let log = tmp.path().join("demo.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut demo = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_sfsync"))
            .env("SFSYNC_LOG", "warn")
            .args(["demo", "--data-dir"])
            .arg(&data)
            .args([
                "--http",
                "127.0.0.1:0",
                "--api",
                "127.0.0.1:0",
                "--duration",
                "300",
                "--rate",
                "200",
            ])
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("sfsync demo starts"),
    );

    // The demo writes the link once its API listens.
    let url_file = data.join("dashboard.url");
    let deadline = Instant::now() + URL_WITHIN;
    let url = loop {
        if let Ok(t) = std::fs::read_to_string(&url_file) {
            if t.ends_with('\n') || t.contains("#token=") {
                break t.trim().to_string();
            }
        }
        if let Ok(Some(status)) = demo.0.try_wait() {
            panic!(
                "sfsync demo exited ({status}) before writing {}:\n{}",
                url_file.display(),
                tail(&log)
            );
        }
        assert!(
            Instant::now() < deadline,
            "sfsync demo did not write {} within {URL_WITHIN:?}:\n{}",
            url_file.display(),
            tail(&log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&url_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "dashboard.url holds a token: mode {mode:o}");
    }
    let (page, token) = url
        .split_once("#token=")
        .unwrap_or_else(|| panic!("dashboard.url is not a sign-in link: {url}"));
    let origin = page
        .strip_suffix("/ui/")
        .unwrap_or_else(|| panic!("dashboard.url does not point at /ui/: {url}"))
        .to_string();

    // The dashboard's files: public, locked down, and nothing else under /ui/.
    let plain = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = plain.get(format!("{origin}/")).send().await.unwrap();
    assert_eq!(r.status(), reqwest::StatusCode::FOUND, "GET /");
    assert_eq!(r.headers()["location"], "/ui/");
    for (path, status, content_type) in [
        ("/ui/", 200, Some("text/html; charset=utf-8")),
        ("/ui/app.js", 200, Some("text/javascript; charset=utf-8")),
        ("/ui/app.css", 200, Some("text/css; charset=utf-8")),
        ("/ui/no-such-file.js", 404, None),
    ] {
        let r = plain.get(format!("{origin}{path}")).send().await.unwrap();
        assert_eq!(r.status().as_u16(), status, "GET {path}");
        let h = r.headers();
        assert_eq!(h["content-security-policy"], "default-src 'self'", "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["cache-control"], "no-cache", "{path}");
        if let Some(ct) = content_type {
            assert_eq!(h["content-type"], ct, "{path}");
        }
    }

    // Wait until the traffic has produced something to act on in every queue.
    let http = reqwest::Client::new();
    let get = |path: &'static str| {
        let http = http.clone();
        let origin = origin.clone();
        let token = token.to_string();
        async move {
            let r = http
                .get(format!("{origin}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .map_err(|e| format!("GET {path}: {e}"))?;
            let status = r.status();
            let body = r.text().await.map_err(|e| format!("GET {path}: {e}"))?;
            if !status.is_success() {
                return Err(format!("GET {path}: {status}: {body}"));
            }
            serde_json::from_str::<J>(&body).map_err(|e| format!("GET {path}: {e}: {body}"))
        }
    };
    wait_for(
        "a held quarantined change, a failed write (dead letter) and an open conflict",
        ITEMS_WITHIN,
        || async {
            let mut problems = Vec::new();
            for (path, key) in [
                ("/api/v1/quarantine?status=held&limit=1", "entries"),
                ("/api/v1/deadletters?kind=write&limit=1", "dead_letters"),
                ("/api/v1/conflicts?state=open&limit=1", "conflicts"),
            ] {
                match get(path).await {
                    Ok(v) if v[key].as_array().is_some_and(|a| !a.is_empty()) => {}
                    Ok(_) => problems.push(format!("{path}: none yet")),
                    Err(e) => problems.push(e),
                }
            }
            problems
        },
    )
    .await;

    // The browser script, bounded.
    let artifacts = Path::new(env!("CARGO_BIN_EXE_sfsync"))
        .parent()
        .and_then(Path::parent)
        .expect("the target directory")
        .join("browser-artifacts");
    // Screenshots of an earlier run must not pass for this one's.
    if let Ok(entries) = std::fs::read_dir(&artifacts) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "png") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // The demo's viewer token reads; the browser checks it cannot act.
    let viewer = std::fs::read_to_string(data.join("api-viewer.token"))
        .expect("the demo writes api-viewer.token")
        .trim()
        .to_string();
    let node_log = tmp.path().join("node.log");
    let node_out = std::fs::File::create(&node_log).unwrap();
    let mut node = KillOnDrop(
        Command::new("node")
            .arg(browser_dir.join("dashboard.mjs"))
            .arg(&url)
            .current_dir(&browser_dir)
            .env("SFSYNC_ARTIFACTS", &artifacts)
            .env("SFSYNC_VIEWER_TOKEN", &viewer)
            .stdin(Stdio::null())
            .stdout(node_out.try_clone().unwrap())
            .stderr(node_out)
            .spawn()
            .expect("node starts"),
    );
    let deadline = Instant::now() + BROWSER_WITHIN;
    let status = loop {
        if let Some(s) = node.0.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = node.0.kill();
            let _ = node.0.wait();
            panic!(
                "dashboard.mjs did not finish within {BROWSER_WITHIN:?}:\n{}",
                file_text(&node_log)
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let output = file_text(&node_log);
    assert!(
        status.success(),
        "dashboard.mjs failed ({status}); screenshots in {}:\n{output}\n--- sfsync demo ---\n{}",
        artifacts.display(),
        tail(&log)
    );
    for page in [
        "overview",
        "budget",
        "runs",
        "deadletters",
        "quarantine",
        "conflicts",
        "map",
    ] {
        assert!(
            artifacts.join(format!("{page}.png")).exists(),
            "no screenshot of {page} in {}",
            artifacts.display()
        );
    }

    support::stop(demo);
}
