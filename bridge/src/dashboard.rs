//! The live dashboard: static files built into the binary (plain JS and a vendored uPlot),
//! served under `/dashboard/` on the HTTP listener. The page reads only the `/v1` read API
//! (status stream, devices, series, anomalies, config); this module holds no state.

use axum::http::{header, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;

/// Only this origin's scripts, styles and API; no inline script, no framing, no forms.
/// uPlot sizes its elements through the CSSOM, which `style-src 'self'` allows.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The page's own files change with each release under the same names: revalidate.
const OWN: &str = "no-cache";
/// uPlot changes only when the vendored version does.
const VENDORED: &str = "public, max-age=86400";

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

pub fn routes() -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::permanent("/dashboard/") }))
        .route(
            "/dashboard",
            get(|| async { Redirect::permanent("/dashboard/") }),
        )
        .route(
            "/dashboard/",
            get(|| file(include_str!("dashboard/index.html"), HTML, OWN)),
        )
        .route(
            "/dashboard/app.js",
            get(|| file(include_str!("dashboard/app.js"), JS, OWN)),
        )
        .route(
            "/dashboard/style.css",
            get(|| file(include_str!("dashboard/style.css"), CSS, OWN)),
        )
        .route(
            "/dashboard/vendor/uPlot.iife.min.js",
            get(|| {
                file(
                    include_str!("dashboard/vendor/uPlot.iife.min.js"),
                    JS,
                    VENDORED,
                )
            }),
        )
        .route(
            "/dashboard/vendor/uPlot.min.css",
            get(|| {
                file(
                    include_str!("dashboard/vendor/uPlot.min.css"),
                    CSS,
                    VENDORED,
                )
            }),
        )
}

async fn file(body: &'static str, content_type: &'static str, cache: &'static str) -> Response {
    let headers: [(HeaderName, HeaderValue); 5] = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    async fn get(path: &str) -> Response {
        let request = Request::get(path).body(Body::empty()).expect("a request");
        routes().oneshot(request).await.expect("infallible")
    }

    #[tokio::test]
    async fn every_file_has_its_type_and_the_policy() {
        for (path, kind) in [
            ("/dashboard/", "text/html"),
            ("/dashboard/app.js", "text/javascript"),
            ("/dashboard/style.css", "text/css"),
            ("/dashboard/vendor/uPlot.iife.min.js", "text/javascript"),
            ("/dashboard/vendor/uPlot.min.css", "text/css"),
        ] {
            let r = get(path).await;
            assert_eq!(r.status(), StatusCode::OK, "{path}");
            let h = r.headers();
            let content_type = h[header::CONTENT_TYPE].to_str().unwrap_or_default();
            assert!(content_type.starts_with(kind), "{path}: {content_type}");
            assert_eq!(h[header::CONTENT_SECURITY_POLICY], CSP, "{path}");
            assert!(h.contains_key(header::CACHE_CONTROL), "{path}");
        }
    }

    #[tokio::test]
    async fn the_root_leads_to_the_dashboard() {
        for path in ["/", "/dashboard"] {
            let r = get(path).await;
            assert!(r.status().is_redirection(), "{path}");
            assert_eq!(r.headers()[header::LOCATION], "/dashboard/", "{path}");
        }
    }

    /// The policy forbids inline script, so the page must load everything from files.
    #[test]
    fn the_page_has_no_inline_script_or_style() {
        let html = include_str!("dashboard/index.html");
        for tag in html.split("<script").skip(1) {
            assert!(tag.trim_start().starts_with("src="), "inline <script{tag}");
        }
        assert!(!html.contains("<style"), "inline <style>");
        assert!(!html.contains(" style="), "a style attribute");
        let handler = html.split(" on").skip(1).find(|rest| {
            let name = rest.trim_start_matches(|c: char| c.is_ascii_alphabetic());
            name.len() < rest.len() && name.starts_with('=')
        });
        assert!(handler.is_none(), "an inline event handler: on{handler:?}");
    }
}
