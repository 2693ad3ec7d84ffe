//! The dashboard: a few static files embedded in the binary, served on the API listener.
//!
//! | method    | path                 | answer                                   |
//! |-----------|----------------------|------------------------------------------|
//! | GET, HEAD | `/`                  | `index.html`                             |
//! | GET, HEAD | `/dashboard/{*path}` | one of [`ASSETS`], else 404              |
//!
//! The page itself is plain JavaScript (`src/api/dashboard/app.js`, no build step) that talks
//! to the management API from the browser, so these routes need no key: the router is merged
//! after the key layer, and every API call the page makes carries the key the user typed.
//! Nothing is loaded from elsewhere (MQTT.js's browser bundle is vendored), and each answer
//! carries a [`CONTENT_SECURITY_POLICY`] that allows no inline script and no other origin but
//! WebSocket connections (the pub/sub tool reaches the node's `[listener.ws]`).
//!
//! Every answer has `Cache-Control: no-cache` and an `ETag` computed at compile time from the
//! file's bytes, so a browser revalidates each time and gets `304 Not Modified` while the
//! binary is the same.

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

/// The `Content-Security-Policy` of every dashboard answer.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; connect-src 'self' ws: wss:; \
     img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// One embedded file.
#[derive(Debug)]
pub struct Asset {
    /// Its path under `/dashboard/` (`index.html` is served at `/`).
    pub path: &'static str,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// Its bytes.
    pub body: &'static [u8],
    /// Its strong `ETag`, quoted: a hash of `body`.
    pub etag: &'static str,
}

/// FNV-1a, 64 bits, of `bytes` (not a security measure: it only names a version of a file).
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

/// `"` + 16 lower-case hex digits of `fnv1a(bytes)` + `"`.
const fn etag_of(bytes: &[u8]) -> [u8; 18] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = fnv1a(bytes);
    let mut out = [b'"'; 18];
    let mut i = 0;
    while i < 16 {
        out[1 + i] = HEX[((hash >> (60 - 4 * i)) & 0xf) as usize];
        i += 1;
    }
    out
}

/// An [`Asset`] of the file `src/api/dashboard/$file`, its ETag computed at compile time.
macro_rules! asset {
    ($path:literal, $file:literal, $content_type:literal) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!("dashboard/", $file)),
            etag: {
                const TAG: [u8; 18] = etag_of(include_bytes!(concat!("dashboard/", $file)));
                match std::str::from_utf8(&TAG) {
                    Ok(tag) => tag,
                    Err(_) => panic!("an ETag is ASCII"),
                }
            },
        }
    };
}

/// `index.html`, served at `/`.
pub const INDEX: Asset = asset!("index.html", "index.html", "text/html; charset=utf-8");

/// Everything under `/dashboard/`.
pub const ASSETS: &[Asset] = &[
    asset!("app.js", "app.js", "text/javascript; charset=utf-8"),
    asset!("app.css", "app.css", "text/css; charset=utf-8"),
    asset!(
        "vendor/mqtt.min.js",
        "vendor/mqtt.min.js",
        "text/javascript; charset=utf-8"
    ),
    asset!(
        "vendor/LICENSE-mqtt.md",
        "vendor/LICENSE-mqtt.md",
        "text/plain; charset=utf-8"
    ),
];

/// The dashboard's routes. Stateless; merge it into the API router after the key layer.
pub fn router() -> Router {
    Router::new()
        .route(
            "/",
            get(|headers: HeaderMap| async move { serve(&INDEX, &headers) }),
        )
        .route("/dashboard/", get(|| async { missing() }))
        .route("/dashboard/{*path}", get(asset))
}

/// `GET /dashboard/{*path}`.
async fn asset(Path(path): Path<String>, headers: HeaderMap) -> Response {
    match ASSETS.iter().find(|a| a.path == path) {
        Some(asset) => serve(asset, &headers),
        None => missing(),
    }
}

/// 404, as JSON like the API's errors.
fn missing() -> Response {
    let mut answer = (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "no such dashboard file" })),
    )
        .into_response();
    common_headers(answer.headers_mut());
    answer
}

/// `asset`, or 304 when `If-None-Match` names its ETag.
fn serve(asset: &'static Asset, request: &HeaderMap) -> Response {
    let mut answer = if not_modified(request, asset.etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut ok = asset.body.into_response();
        ok.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        ok
    };
    let headers = answer.headers_mut();
    headers.insert(header::ETAG, HeaderValue::from_static(asset.etag));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    common_headers(headers);
    answer
}

fn common_headers(headers: &mut HeaderMap) {
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

/// Whether an `If-None-Match` of `request` matches `etag` (RFC 9110 §13.1.2: `*`, or a list
/// of tags compared weakly, so `W/"x"` matches `"x"`).
fn not_modified(request: &HeaderMap, etag: &str) -> bool {
    request
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves [`router`] on a free loopback port; returns `http://addr`.
    async fn serve_dashboard() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router()).await });
        format!("http://{addr}")
    }

    /// A blocking GET on another thread: (status, headers, body).
    async fn get_with(
        url: String,
        if_none_match: Option<&'static str>,
    ) -> (u16, axum::http::HeaderMap, Vec<u8>) {
        tokio::task::spawn_blocking(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut request = agent.get(&url);
            if let Some(tag) = if_none_match {
                request = request.header("if-none-match", tag);
            }
            let mut answer = request.call().unwrap();
            let status = answer.status().as_u16();
            let headers = answer.headers().clone();
            let body = answer.body_mut().read_to_vec().unwrap();
            (status, headers, body)
        })
        .await
        .unwrap()
    }

    fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
    }

    #[test]
    fn etags_are_quoted_hashes_and_differ() {
        let mut seen = vec![INDEX.etag];
        for asset in ASSETS {
            assert_eq!(asset.etag.len(), 18);
            assert!(asset.etag.starts_with('"') && asset.etag.ends_with('"'));
            assert_eq!(asset.etag.as_bytes(), &etag_of(asset.body));
            assert!(!seen.contains(&asset.etag), "{} shares an ETag", asset.path);
            seen.push(asset.etag);
        }
        // FNV-1a test vectors.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn if_none_match_lists_star_and_weak_tags() {
        let tag = "\"0123456789abcdef\"";
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::IF_NONE_MATCH, HeaderValue::from_static(v));
            not_modified(&h, tag)
        };
        assert!(!not_modified(&HeaderMap::new(), tag));
        assert!(with("\"0123456789abcdef\""));
        assert!(with("W/\"0123456789abcdef\""));
        assert!(with("\"other\", \"0123456789abcdef\""));
        assert!(with("*"));
        assert!(!with("\"0123456789abcdee\""));
        assert!(!with("0123456789abcdef"));
    }

    #[test]
    fn the_page_has_no_inline_script_and_no_external_url() {
        let page = std::str::from_utf8(INDEX.body).unwrap();
        for tag in page.split("<script").skip(1) {
            let open = &tag[..tag.find('>').unwrap()];
            assert!(open.contains("src="), "inline <script>: {open}");
            assert!(tag[open.len() + 1..].starts_with("</script>"));
        }
        assert!(!page.contains(" style="), "inline style attribute");
        for file in [&INDEX, &ASSETS[0], &ASSETS[1]] {
            let text = std::str::from_utf8(file.body).unwrap();
            assert!(
                !text.contains("http://") && !text.contains("https://"),
                "{} names an external URL",
                file.path
            );
        }
    }

    #[tokio::test]
    async fn serves_each_file_with_its_type_and_policy() {
        let base = serve_dashboard().await;
        let (status, headers, body) = get_with(format!("{base}/"), None).await;
        assert_eq!(status, 200);
        assert_eq!(header(&headers, "content-type"), "text/html; charset=utf-8");
        assert_eq!(header(&headers, "cache-control"), "no-cache");
        assert_eq!(header(&headers, "etag"), INDEX.etag);
        assert_eq!(
            header(&headers, "content-security-policy"),
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(header(&headers, "x-content-type-options"), "nosniff");
        assert_eq!(body, INDEX.body);

        for (path, content_type) in [
            ("app.js", "text/javascript; charset=utf-8"),
            ("app.css", "text/css; charset=utf-8"),
            ("vendor/mqtt.min.js", "text/javascript; charset=utf-8"),
            ("vendor/LICENSE-mqtt.md", "text/plain; charset=utf-8"),
        ] {
            let (status, headers, body) = get_with(format!("{base}/dashboard/{path}"), None).await;
            assert_eq!(status, 200, "{path}");
            assert_eq!(header(&headers, "content-type"), content_type, "{path}");
            assert_eq!(header(&headers, "cache-control"), "no-cache", "{path}");
            let asset = ASSETS.iter().find(|a| a.path == path).unwrap();
            assert_eq!(header(&headers, "etag"), asset.etag, "{path}");
            assert_eq!(body, asset.body, "{path}");
        }
    }

    #[tokio::test]
    async fn a_matching_if_none_match_is_a_304_without_a_body() {
        let base = serve_dashboard().await;
        let (status, headers, body) = get_with(format!("{base}/"), Some(INDEX.etag)).await;
        assert_eq!(status, 304);
        assert_eq!(header(&headers, "etag"), INDEX.etag);
        assert_eq!(header(&headers, "cache-control"), "no-cache");
        assert!(body.is_empty());

        let js = &ASSETS[0];
        let (status, _, body) = get_with(format!("{base}/dashboard/app.js"), Some(js.etag)).await;
        assert_eq!(status, 304);
        assert!(body.is_empty());

        // Another file's tag is not this one's.
        let (status, _, body) =
            get_with(format!("{base}/dashboard/app.js"), Some(INDEX.etag)).await;
        assert_eq!(status, 200);
        assert_eq!(body, js.body);
    }

    #[tokio::test]
    async fn unknown_files_are_404() {
        let base = serve_dashboard().await;
        // Answered here: a JSON error with the page's headers.
        for path in [
            "/dashboard/",
            "/dashboard/nope.js",
            "/dashboard/vendor",
            "/dashboard/vendor/",
            "/dashboard/APP.JS",
            "/dashboard/app.js/",
            "/dashboard/index.html",
            "/dashboard//app.js",
        ] {
            let (status, headers, body) = get_with(format!("{base}{path}"), None).await;
            assert_eq!(status, 404, "{path}");
            assert_eq!(
                header(&headers, "content-security-policy"),
                CONTENT_SECURITY_POLICY,
                "{path}"
            );
            let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert!(body["error"].is_string(), "{path}");
        }
        // Whatever the client or the router makes of dot segments, no file outside the table.
        for path in [
            "/dashboard/../Cargo.toml",
            "/dashboard/%2e%2e/Cargo.toml",
            "/dashboard/..%2FCargo.toml",
            "/dashboard/vendor/../../api.rs",
            "/dashboard",
            "/index.html",
        ] {
            let (status, _, _) = get_with(format!("{base}{path}"), None).await;
            assert_eq!(status, 404, "{path}");
        }
    }
}
