//! The web page of `xomcloud serve`: plain HTML, CSS and JavaScript embedded in the binary
//! (no build step, nothing fetched from elsewhere). `/` is the page, `/app.js` and `/style.css`
//! its only script and style sheet; the page talks to the jobs API on the same origin.
//!
//! Every answer carries a strict Content-Security-Policy (only this origin, no inline script or
//! style), `X-Content-Type-Options: nosniff` and an `ETag`. The page links its assets as
//! `/app.js?v={hash}`, so those answers may be cached for a year; the page itself is revalidated
//! on every load.

use std::sync::LazyLock;

use axum::extract::RawQuery;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

const INDEX_HTML: &str = include_str!("index.html");
const APP_JS: &str = include_str!("app.js");
const STYLE_CSS: &str = include_str!("style.css");
const FAVICON_SVG: &str = include_str!("favicon.svg");

/// Only this origin, for everything; no inline script or style, no plugins, no framing.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
     require-trusted-types-for 'script'";

/// Revalidate on every load (the `ETag` makes that a 304).
const REVALIDATE: &str = "no-cache";
/// A versioned asset never changes under its URL.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

struct Asset {
    body: &'static str,
    content_type: &'static str,
    /// The body's hash: the `ETag` and the `?v=` of its URL.
    version: String,
}

impl Asset {
    fn new(body: &'static str, content_type: &'static str) -> Self {
        Self {
            body,
            content_type,
            version: format!("{:016x}", fnv1a(body.as_bytes())),
        }
    }
}

struct Assets {
    index: String,
    index_etag: String,
    app: Asset,
    style: Asset,
    favicon: Asset,
}

static ASSETS: LazyLock<Assets> = LazyLock::new(|| {
    let app = Asset::new(APP_JS, "text/javascript; charset=utf-8");
    let style = Asset::new(STYLE_CSS, "text/css; charset=utf-8");
    let favicon = Asset::new(FAVICON_SVG, "image/svg+xml");
    let index = INDEX_HTML
        .replace("{{APP_VERSION}}", &app.version)
        .replace("{{STYLE_VERSION}}", &style.version);
    let index_etag = format!("{:016x}", fnv1a(index.as_bytes()));
    Assets {
        index,
        index_etag,
        app,
        style,
        favicon,
    }
});

/// 64-bit FNV-1a: enough to tell two versions of an embedded file apart.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| {
        (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `/`, `/app.js`, `/style.css` and `/favicon.svg`, for any router state.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/style.css", get(style_css))
        .route("/favicon.svg", get(favicon))
}

async fn index(headers: HeaderMap) -> Response {
    let assets = &*ASSETS;
    respond(
        &headers,
        assets.index.clone(),
        "text/html; charset=utf-8",
        &assets.index_etag,
        REVALIDATE,
    )
}

async fn app_js(headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    versioned(&headers, query.as_deref(), &ASSETS.app)
}

async fn style_css(headers: HeaderMap, RawQuery(query): RawQuery) -> Response {
    versioned(&headers, query.as_deref(), &ASSETS.style)
}

async fn favicon(headers: HeaderMap) -> Response {
    let asset = &ASSETS.favicon;
    respond(
        &headers,
        asset.body.to_owned(),
        asset.content_type,
        &asset.version,
        "public, max-age=86400",
    )
}

/// Cached for good when asked for under its current `?v=`; revalidated otherwise.
fn versioned(headers: &HeaderMap, query: Option<&str>, asset: &Asset) -> Response {
    let current = query.is_some_and(|q| q == format!("v={}", asset.version));
    let cache = if current { IMMUTABLE } else { REVALIDATE };
    respond(
        headers,
        asset.body.to_owned(),
        asset.content_type,
        &asset.version,
        cache,
    )
}

fn respond(
    headers: &HeaderMap,
    body: String,
    content_type: &'static str,
    version: &str,
    cache: &'static str,
) -> Response {
    let etag = format!("\"{version}\"");
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|tags| {
            tags.split(',')
                .any(|t| t.trim().trim_start_matches("W/") == etag || t.trim() == "*")
        });
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
            body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(etag) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, etag);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_its_assets_by_version_and_nothing_elsewhere() {
        let assets = &*ASSETS;
        assert!(assets
            .index
            .contains(&format!("/app.js?v={}", assets.app.version)));
        assert!(assets
            .index
            .contains(&format!("/style.css?v={}", assets.style.version)));
        assert!(!assets.index.contains("{{"), "a placeholder is left");
        // Nothing from elsewhere (the browser test checks the requests the page makes).
        for (name, text) in [
            ("index.html", assets.index.as_str()),
            ("style.css", STYLE_CSS),
        ] {
            // Example links in the page's text are never fetched.
            let text = text.replace("https://soundcloud.com/", "");
            for external in ["http:", "https:", "//", "@import", "url("] {
                assert!(!text.contains(external), "{name} refers to {external}");
            }
        }
        // No inline script, style or event handler: the CSP would refuse them.
        let html = assets.index.to_ascii_lowercase();
        assert!(!html.contains("<script>") && !html.contains("<style"));
        assert!(!html.contains(" style="));
        let handler = html.match_indices(" on").any(|(at, _)| {
            let name: String = html[at + 3..]
                .chars()
                .take_while(char::is_ascii_lowercase)
                .collect();
            !name.is_empty() && html[at + 3 + name.len()..].starts_with('=')
        });
        assert!(!handler, "inline event handler");
    }

    #[test]
    fn fnv1a_tells_versions_apart() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}
