//! The dashboard: static HTML, CSS and JavaScript compiled into the binary and served at
//! `/ui/` by the same listener as the API (no separate front-end server, no build step, no CDN).
//!
//! Guarantees: the files hold no data — every figure the page shows is fetched from `/api/v1/`
//! with the token the person signs in with — so they are served without a token. Every answer
//! (the redirect, the files and the 404 of an unknown file) carries
//! `Content-Security-Policy: default-src 'self'` (no inline script or style, nothing from
//! another origin), `X-Content-Type-Options: nosniff` and `Cache-Control: no-cache`, so a
//! browser never runs a file as something it is not and always revalidates after an upgrade.

use axum::extract::Path;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::ApiError;

/// One embedded file of the dashboard.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

/// Every file served under `/ui/` (the index is also `/ui/`).
const ASSETS: &[Asset] = &[
    Asset {
        name: "index.html",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("ui/index.html"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("ui/app.css"),
    },
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("ui/app.js"),
    },
    Asset {
        name: "charts.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("ui/charts.js"),
    },
    Asset {
        name: "dom.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("ui/dom.js"),
    },
    Asset {
        name: "favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("ui/favicon.svg"),
    },
];

/// The headers every dashboard answer carries.
fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'self'"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn serve(name: &str) -> Response {
    match ASSETS.iter().find(|a| a.name == name) {
        Some(a) => secure(
            (
                StatusCode::OK,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static(a.content_type),
                )],
                a.body,
            )
                .into_response(),
        ),
        None => secure(
            ApiError::not_found(format!(
                "no dashboard file /ui/{name}; the dashboard is at /ui/"
            ))
            .into_response(),
        ),
    }
}

/// `GET /`: 302 to the dashboard — under the path the API is served under (`/orgs/<name>` in
/// a deployment, or a reverse proxy's `X-Forwarded-Prefix`).
pub async fn root(headers: axum::http::HeaderMap) -> Response {
    let to = format!("{}/ui/", super::forwarded_prefix(&headers));
    let location = HeaderValue::from_str(&to).unwrap_or(HeaderValue::from_static("/ui/"));
    secure((StatusCode::FOUND, [(header::LOCATION, location)]).into_response())
}

/// `GET /ui/`: the dashboard's page.
pub async fn index() -> Response {
    serve("index.html")
}

/// `GET /ui/{file}`: one of the dashboard's files, 404 for any other name.
pub async fn asset(
    file: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Response {
    match file {
        Ok(Path(name)) => serve(&name),
        Err(r) => secure(ApiError::from(r).into_response()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_the_page_names_is_embedded() {
        let index = std::str::from_utf8(ASSETS[0].body).unwrap();
        let app = std::str::from_utf8(ASSETS[2].body).unwrap();
        for a in ASSETS.iter().skip(1) {
            let named = index.contains(a.name) || app.contains(&format!("./{}", a.name));
            assert!(named, "{} is embedded but nothing loads it", a.name);
        }
        // No inline script: the policy (default-src 'self') would refuse it.
        assert!(
            !index.contains("<script>"),
            "index.html has an inline script"
        );
        assert!(!index.contains("style="), "index.html has an inline style");
    }

    #[tokio::test]
    async fn unknown_files_are_404_and_every_answer_is_locked_down() {
        for resp in [
            serve("app.js"),
            serve("nope.js"),
            root(axum::http::HeaderMap::new()).await,
        ] {
            let h = resp.headers();
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], "default-src 'self'");
            assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        }
        assert_eq!(serve("nope.js").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        let js = serve("app.js");
        assert_eq!(js.status(), StatusCode::OK);
        assert_eq!(
            js.headers()[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        let r = root(axum::http::HeaderMap::new()).await;
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()[header::LOCATION], "/ui/");
        // One org of a deployment (or behind a reverse proxy): its own dashboard; a prefix that
        // is not a plain path is ignored.
        let under = |prefix: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert("x-forwarded-prefix", HeaderValue::from_str(prefix).unwrap());
            h
        };
        let r = root(under("/orgs/east")).await;
        assert_eq!(r.headers()[header::LOCATION], "/orgs/east/ui/");
        let r = root(under("https://evil.example/x")).await;
        assert_eq!(r.headers()[header::LOCATION], "/ui/");
    }
}
