//! Plain HTTP: health, metrics and the web client.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::Metrics;
use crate::storage::Storage;

/// The built web client (`web/dist`), embedded in release builds and read from disk in debug
/// builds.
#[derive(rust_embed::Embed)]
#[folder = "../../web/dist"]
struct WebClient;

/// What the HTTP routes need.
#[derive(Clone)]
pub(crate) struct HttpState {
    /// The database, for `/healthz`.
    pub storage: Arc<dyn Storage>,
    /// The metrics, for `/metrics`.
    pub metrics: Arc<Metrics>,
}

/// The request headers anything behind this layer reads: the relay (`Host` for login
/// signatures, `X-Forwarded-For` behind a trusted proxy, `If-None-Match` for the web client's
/// files), engineioxide (the WebSocket key for the upgrade answer, the content type of a
/// polling body). Upgrade negotiation itself is hyper's, done before this layer.
const HEADERS_READ: [header::HeaderName; 5] = [
    header::HOST,
    header::SEC_WEBSOCKET_KEY,
    header::CONTENT_TYPE,
    header::HeaderName::from_static("x-forwarded-for"),
    header::IF_NONE_MATCH,
];

/// Keeps of a request's head only what is read later ([`HEADERS_READ`] and the URI), copied
/// out of the connection's read buffer.
///
/// Socket.IO keeps each connection's request head for the connection's whole life. hyper hands
/// out header values (and the URI) as slices of the buffer it read the request into, so the
/// head would hold that whole buffer, several KiB per idle connection, most of it empty; and a
/// browser sends a dozen headers the relay never reads (`User-Agent`, `Accept-Language`,
/// cookies, `Origin`...), about a kilobyte and a half more per connection. Copied and trimmed,
/// the head holds its own few hundred bytes. Runs outside the Socket.IO layer.
pub(crate) async fn trim_request_head(request: Request) -> Request {
    let (mut parts, body) = request.into_parts();
    let kept = HEADERS_READ.iter().map(|name| parts.headers.get_all(name).iter().count()).sum();
    let mut headers = HeaderMap::with_capacity(kept);
    for name in &HEADERS_READ {
        for value in parts.headers.get_all(name) {
            // `from_bytes` copies; the value was valid, so it stays valid.
            if let Ok(mut copied) = HeaderValue::from_bytes(value.as_bytes()) {
                copied.set_sensitive(value.is_sensitive());
                headers.append(name.clone(), copied);
            }
        }
    }
    parts.headers = headers;
    if let Ok(uri) = Uri::try_from(parts.uri.to_string()) {
        parts.uri = uri;
    }
    Request::from_parts(parts, body)
}

/// `/healthz`, `/metrics` and the web client.
pub(crate) fn routes(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(get(web_client))
        .with_state(state)
}

async fn healthz(State(state): State<HttpState>) -> Response {
    match state.storage.health().await {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(error) => {
            state.metrics.storage_errors.inc();
            tracing::warn!(%error, "health check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "storage unavailable\n").into_response()
        }
    }
}

async fn metrics(State(state): State<HttpState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
        .into_response()
}

/// Served while the web client has not been built.
const NOT_BUILT: &str = "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<title>Sotto</title></head><body><main><h1>Sotto</h1><p>The relay is running, but the web \
client has not been built. Run <code>./scripts/run</code>, which builds it, or \
<code>npm ci &amp;&amp; npm run build</code> in <code>web/</code>.</p></main></body></html>";

/// A strict policy: the client's own scripts and styles, its own relay, nothing else.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// Serves the web client. Every file is revalidated on each use (`no-cache`) against a tag
/// made from its content: the served code is what users trust (docs/SECURITY.md), so after an
/// upgrade every browser runs the new client at once, and an unchanged file costs a 304 with
/// no body. (The files keep fixed names, so an hour of `max-age` let browsers, and proxies,
/// run the old `app.js` against the new relay.)
async fn web_client(uri: Uri, request_headers: HeaderMap) -> Response {
    let path = uri.path().trim_start_matches('/');
    let path = if path.is_empty() { "index.html" } else { path };
    let (file, path) = match WebClient::get(path) {
        Some(file) => (Some(file), path),
        // Unknown paths without an extension are client-side routes: serve the app.
        None if !path.contains('.') => (WebClient::get("index.html"), "index.html"),
        None => (None, path),
    };
    let security = [
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    match file {
        Some(file) => {
            let tag = entity_tag(&file.metadata.sha256_hash());
            let validators = [(header::CACHE_CONTROL, "no-cache"), (header::ETAG, tag.as_str())];
            if unchanged(&request_headers, &tag) {
                return (StatusCode::NOT_MODIFIED, security, validators).into_response();
            }
            let kind = [(header::CONTENT_TYPE, file.metadata.mimetype())];
            (security, validators, kind, file.data).into_response()
        }
        None if path == "index.html" => {
            (security, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], NOT_BUILT)
                .into_response()
        }
        None => (StatusCode::NOT_FOUND, "not found\n").into_response(),
    }
}

/// A strong entity tag: the first 16 bytes of the file's SHA-256, in hex, quoted.
fn entity_tag(sha256: &[u8; 32]) -> String {
    let hex: String = sha256[..16].iter().map(|byte| format!("{byte:02x}")).collect();
    format!("\"{hex}\"")
}

/// Whether the request's `If-None-Match` names `tag` (or `*`): the browser's copy is current.
fn unchanged(request_headers: &HeaderMap, tag: &str) -> bool {
    request_headers.get_all(header::IF_NONE_MATCH).iter().any(|value| {
        value.to_str().is_ok_and(|list| {
            list.split(',')
                .map(str::trim)
                .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == tag)
        })
    })
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, Bytes};

    use super::*;

    #[test]
    fn a_file_is_unchanged_only_for_its_own_tag() {
        let tag = entity_tag(&[0xab; 32]);
        assert_eq!(tag, format!("\"{}\"", "ab".repeat(16)));
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
            headers
        };
        assert!(unchanged(&with("\"abababababababababababababababab\""), &tag));
        assert!(unchanged(&with("\"00\", W/\"abababababababababababababababab\""), &tag));
        assert!(unchanged(&with("*"), &tag));
        assert!(!unchanged(&with("\"00\""), &tag), "another version");
        assert!(!unchanged(&HeaderMap::new(), &tag), "no validator: the whole file");
    }

    #[tokio::test]
    async fn a_trimmed_request_head_holds_what_is_read_and_nothing_of_the_read_buffer() {
        // What hyper does: values and the URI are slices of one shared read buffer.
        let buffer = Bytes::from(
            b"/socket.io/?EIO=4&transport=websocket 198.51.100.7 127.0.0.1:3000".repeat(64),
        );
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = Uri::from_maybe_shared(buffer.slice(0..37)).unwrap();
        let forwarded = HeaderValue::from_maybe_shared(buffer.slice(38..50)).unwrap();
        request.headers_mut().insert("x-forwarded-for", forwarded);
        request.headers_mut().append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
        request.headers_mut().append(header::HOST, HeaderValue::from_static("127.0.0.1:3000"));
        request.headers_mut().append(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static("a2V5"));
        request.headers_mut().append(header::USER_AGENT, HeaderValue::from_static("Browser/1.0"));
        request.headers_mut().append(header::COOKIE, HeaderValue::from_static("session=1"));

        let trimmed = trim_request_head(request).await;
        let range = buffer.as_ptr_range();
        let inside = |bytes: &[u8]| range.contains(&bytes.as_ptr());
        let hops: Vec<_> = trimmed.headers().get_all("x-forwarded-for").iter().collect();
        assert_eq!(hops, ["198.51.100.7", "10.0.0.2"], "every line, in order");
        assert!(!inside(hops[0].as_bytes()), "the header value still points into the buffer");
        assert_eq!(trimmed.uri(), "/socket.io/?EIO=4&transport=websocket");
        let query = trimmed.uri().query().unwrap();
        assert!(!inside(query.as_bytes()), "the URI still points into the buffer");
        assert_eq!(trimmed.headers()[header::HOST], "127.0.0.1:3000");
        assert_eq!(trimmed.headers()[header::SEC_WEBSOCKET_KEY], "a2V5");
        assert!(trimmed.headers().get(header::USER_AGENT).is_none());
        assert!(trimmed.headers().get(header::COOKIE).is_none());
        assert_eq!(trimmed.headers().len(), 4);
    }
}
