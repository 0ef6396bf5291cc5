//! `xomcloud serve`: the production API on one machine. The same `DownloadService` as the
//! Lambda, the same JWT verifier as the authorizer; zips on disk behind signed links, or in S3
//! when `S3_DOWNLOAD_BUCKET_NAME` is set.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use xomcloud_authorizer::{Authorizer, Rules};
use xomcloud_common::config::{self, EnvSecrets, Secret, Secrets};
use xomcloud_common::presign::{LinkError, LinkSigner};
use xomcloud_common::response::Cors;
use xomcloud_common::storage::{
    attachment_named, content_disposition, content_type, unix_now, LocalStorage, S3Storage, Storage,
};
use xomcloud_common::ApiError;
use xomcloud_download_tracks::jobs::{JobsApi, JobsRequest};
use xomcloud_download_tracks::limits::Limits;
use xomcloud_download_tracks::service::DownloadService;

struct App {
    service: Arc<DownloadService>,
    jobs: JobsApi,
    authorizer: Authorizer,
    /// `/auth/token`, `/auth/refresh`: the OAuth proxy, as the auth-token Lambda.
    auth: xomcloud_auth_token::AuthTokenService,
    /// Set in local mode: serves `GET /files/…`.
    files: Option<LocalStorage>,
    cors: Cors,
}

type Shared = Arc<App>;

pub async fn run(addr: &str) -> Result<ExitCode, String> {
    xomcloud_common::logging::init();
    let settings = crate::cli::settings()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    let base_url = format!("http://{local}");

    let (secrets, storage, files, dev_secret): (Secrets, Arc<dyn Storage>, _, _) =
        if let Some(bucket) = settings.bucket.clone() {
            let sdk = config::aws_config().await;
            let s3 = S3Storage::new(&sdk, bucket, settings.s3_endpoint.is_some());
            let secrets = config::env_then_ssm(&sdk, &settings.ssm_prefix);
            (secrets, Arc::new(s3), None, None)
        } else {
            let (secret, dev) = match crate::cli::api_secret() {
                Ok(secret) => (secret, None),
                // No secret in local mode: one for this process, printed below with a token.
                Err(_) => {
                    let secret = format!("{:032x}", rand::random::<u128>());
                    (secret.clone(), Some(secret))
                }
            };
            let env = EnvSecrets::from_env().with(Secret::ApiSecretKey, secret.clone());
            let signer = LinkSigner::new(secret.as_bytes());
            let storage = || LocalStorage::new(&settings.data_dir, &base_url, signer.clone());
            let secrets = Secrets::new(&settings.ssm_prefix).source(env);
            (
                secrets,
                Arc::new(storage()) as Arc<dyn Storage>,
                Some(storage()),
                dev,
            )
        };
    // The page's link carries a token signed with the secret in effect (never the secret).
    let page_token = page_token(&secrets).await;
    // The same verifier as the authorizer Lambda, reading the secret per request.
    let authorizer = Authorizer::new(secrets.clone(), Rules::from(&settings));
    let auth = xomcloud_auth_token::AuthTokenService::from_settings(&settings, secrets.clone())
        .map_err(|e| e.to_string())?;
    let service = Arc::new(
        DownloadService::new(&settings, storage.clone(), secrets).with_limits(limits(&settings)),
    );
    let jobs = crate::jobs_local::start(&settings, storage, service.clone()).await?;
    let app = Arc::new(App {
        service,
        jobs,
        authorizer,
        auth,
        files,
        cors: Cors::new(settings.cors_allow_origin.as_deref()),
    });
    println!("xomcloud listening on {base_url}");
    let page_url = page_url(local);
    match &page_token {
        Ok(token) => println!("open in a browser: {page_url}#token={token}"),
        Err(why) => println!(
            "open in a browser: {page_url} (no token: {why}; paste one from `xomcloud token --sub you`)"
        ),
    }
    match &app.files {
        Some(_) => println!(
            "storage: {} (local, signed links)",
            settings.data_dir.display()
        ),
        None => println!("storage: s3://{}", settings.bucket_or_default()),
    }
    if let (Some(_), Ok(token)) = (dev_secret, &page_token) {
        println!("API_SECRET_KEY is not set: using a random secret for this process.");
        println!("token (12 h): {token}");
        println!(
            "try: curl -sS -X POST {base_url}/download -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \
             -d '{{\"tracks\":[{{\"id\":\"1\",\"url\":\"https://soundcloud.com/forss/flickermood\",\"title\":\"Flickermood\",\"artist\":\"Forss\"}}]}}'"
        );
    }
    // The peer's address is the caller's address (no proxy header is trusted).
    let service = router(app).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, service)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// Per-caller rate limits in this process's memory (`RATE_LIMIT_PER_MINUTE=0`: off).
fn limits(settings: &config::Settings) -> Limits {
    let bucket = xomcloud_jobs::limiter::Bucket::new(
        settings.rate_limit_per_minute,
        settings.rate_limit_burst,
    );
    match bucket {
        Some(bucket) => {
            tracing::info!(
                per_minute = bucket.per_minute(),
                burst = bucket.burst(),
                max_active_jobs = settings.max_active_jobs_per_caller,
                "per-caller limits on (caller = principal + peer address)"
            );
            Limits::new(Arc::new(xomcloud_jobs::limiter::MemoryLimiter::new(bucket)))
        }
        None => {
            tracing::info!("per-caller rate limits are off: RATE_LIMIT_PER_MINUTE=0");
            Limits::off()
        }
    }
}

/// A 12-hour token for the page, signed with the API secret in effect.
async fn page_token(secrets: &Secrets) -> Result<String, String> {
    let lookup = secrets.get(Secret::ApiSecretKey);
    let secret = match tokio::time::timeout(std::time::Duration::from_secs(10), lookup).await {
        Ok(Ok(secret)) => secret,
        Ok(Err(e)) => return Err(format!("the API secret cannot be read: {e}")),
        Err(_) => return Err("reading the API secret timed out".into()),
    };
    xomcloud_authorizer::jwt::mint("dev", secret.as_bytes(), 12 * 3600).map_err(|e| e.to_string())
}

/// The page as a browser on this machine reaches it (a wildcard address is not one to open).
fn page_url(local: std::net::SocketAddr) -> String {
    let mut addr = local;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    format!("http://{addr}/")
}

fn router(app: Shared) -> Router {
    Router::new()
        // The web page: `/`, `/app.js`, `/style.css`, `/favicon.svg`.
        .merge(crate::web::routes())
        .route("/download", any(download))
        .route("/auth/token", any(auth_token))
        .route("/auth/refresh", any(auth_token))
        // The route of the XOMCLOUD infrastructure's API Gateway: the same endpoint.
        .route("/download/tracks", any(download))
        .route("/jobs", any(jobs))
        .route("/jobs/{*rest}", any(jobs))
        .route("/files/{*key}", get(file))
        .route("/openapi.json", get(openapi))
        .fallback(not_found)
        // Bodies up to twice the API's limit reach the validator, which answers with the envelope.
        .layer(DefaultBodyLimit::max(
            2 * xomcloud_download_tracks::validate::MAX_BODY_BYTES,
        ))
        .with_state(app)
}

fn reply(response: http::Response<String>) -> Response {
    response.map(Body::from)
}

/// The principal of the request's token (the authorizer's check); `Ok(None)` for a preflight.
async fn authorize(
    app: &App,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Option<String>, Response> {
    if method == Method::OPTIONS {
        return Ok(None);
    }
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match app.authorizer.principal(authorization).await {
        Ok(p) => Ok(Some(p.sub)),
        Err(_) => {
            let err = ApiError::Auth("Missing or invalid token".into());
            Err(reply(app.cors.error(&err)))
        }
    }
}

/// The body, or the envelope's 400 when it is over the cap above (axum would answer a plain-text
/// 413) or cannot be read.
fn read_body(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::validation(format!(
                "request body is too large (at most {} bytes)",
                xomcloud_download_tracks::validate::MAX_BODY_BYTES
            ))
        } else {
            ApiError::validation("request body could not be read")
        }
    })
}

/// The sign-in bootstrap: no token is asked for, as API Gateway wires it without the authorizer.
async fn auth_token(
    State(app): State<Shared>,
    method: Method,
    uri: axum::http::Uri,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match read_body(body) {
        Ok(body) => body,
        Err(err) => return reply(app.cors.error(&err)),
    };
    reply(app.auth.handle(&method, uri.path(), &body).await)
}

async fn download(
    State(app): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let principal = match authorize(&app, &method, &headers).await {
        Ok(principal) => principal,
        Err(denied) => return denied,
    };
    let body = match read_body(body) {
        Ok(body) => body,
        Err(err) => return reply(app.cors.error(&err)),
    };
    reply(
        app.service
            .handle(
                &method,
                &body,
                principal.as_deref(),
                Some(&peer_address(peer)),
            )
            .await,
    )
}

async fn jobs(
    State(app): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let principal = match authorize(&app, &method, &headers).await {
        Ok(principal) => principal,
        Err(denied) => return denied,
    };
    let body = match read_body(body) {
        Ok(body) => body,
        Err(err) => return reply(app.cors.error(&err)),
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1");
    let jobs_url = format!("http://{host}/jobs");
    let rest = uri.path().strip_prefix("/jobs").unwrap_or_default();
    let idempotency_key = xomcloud_download_tracks::jobs::api::idempotency_key(&headers);
    let address = peer_address(peer);
    let request = JobsRequest {
        rest,
        body: &body,
        principal: principal.as_deref(),
        address: Some(&address),
        idempotency_key,
        jobs_url: &jobs_url,
    };
    reply(app.jobs.handle(&method, &request).await)
}

/// The peer's IP, an IPv4-mapped IPv6 address as IPv4 (the port is not part of the caller).
fn peer_address(peer: SocketAddr) -> String {
    peer.ip().to_canonical().to_string()
}

/// The key and query are read leniently: a key that is not UTF-8 is no file (404) and a missing,
/// repeated or malformed parameter an unsigned link (403), never axum's plain-text 400.
async fn file(
    State(app): State<Shared>,
    key: Result<Path<String>, PathRejection>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(files) = &app.files else {
        return not_found(State(app)).await;
    };
    let Ok(Path(key)) = key else {
        return reply(app.cors.error(&ApiError::NotFound("No such file".into())));
    };
    let expires = q.get("expires").and_then(|e| e.parse::<u64>().ok());
    let (Some(expires), Some(signature)) = (expires, q.get("signature")) else {
        return reply(
            app.cors
                .error(&ApiError::Forbidden("The link is not signed".into())),
        );
    };
    // A named link (a job's track) gives that name; the name is signed with the rest.
    let name = q.get("name").map(String::as_str);
    if let Err(e) = files
        .signer()
        .verify_named(&key, expires, name, signature, unix_now())
    {
        let message = match e {
            LinkError::Expired => "The link has expired",
            LinkError::BadSignature => "The link signature is invalid",
        };
        return reply(app.cors.error(&ApiError::Forbidden(message.into())));
    }
    let Some(path) = files.path_of(&key) else {
        return reply(app.cors.error(&ApiError::NotFound("No such file".into())));
    };
    let file = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) => return reply(app.cors.error(&ApiError::NotFound("No such file".into()))),
    };
    let length = file.metadata().await.map(|m| m.len()).ok();
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    let headers = file_headers(&key, name, length, app.cors.allow_origin());
    (StatusCode::OK, headers, body).into_response()
}

/// The headers of a `/files` answer. No `Content-Length` when the size is unknown: the body is
/// streamed anyway, and a made-up length would cut it short.
fn file_headers(
    key: &str,
    name: Option<&str>,
    length: Option<u64>,
    allow_origin: &str,
) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let mut set = |name, value: String| {
        if let Ok(value) = header::HeaderValue::try_from(value) {
            headers.insert(name, value);
        }
    };
    set(header::CONTENT_TYPE, content_type(key).to_owned());
    let disposition = match name {
        Some(name) => attachment_named(name),
        None => content_disposition(key),
    };
    set(header::CONTENT_DISPOSITION, disposition);
    if let Some(length) = length {
        set(header::CONTENT_LENGTH, length.to_string());
    }
    set(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin.to_owned());
    headers
}

/// The API's OpenAPI 3.1 document, as checked in (`tests/openapi_contract.rs` holds it to the code).
async fn openapi() -> Response {
    let json = [(header::CONTENT_TYPE, "application/json")];
    (json, include_str!("../openapi.json")).into_response()
}

async fn not_found(State(app): State<Shared>) -> Response {
    reply(app.cors.error(&ApiError::NotFound("No such route".into())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_of_unknown_size_has_no_content_length() {
        let unknown = file_headers("a/xomcloud-tracks.zip", None, None, "https://x.example");
        assert!(unknown.get(header::CONTENT_LENGTH).is_none(), "{unknown:?}");
        assert_eq!(unknown[header::CONTENT_TYPE], "application/zip");
        assert_eq!(
            unknown[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://x.example"
        );
        let known = file_headers("a/xomcloud-tracks.zip", None, Some(42), "https://x.example");
        assert_eq!(known[header::CONTENT_LENGTH], "42");
        assert_eq!(
            known[header::CONTENT_DISPOSITION],
            "attachment; filename=\"xomcloud-tracks.zip\""
        );
        let track = file_headers(".cache/tracks/u1.mp3", Some("Ærø - Ön.mp3"), None, "*");
        assert_eq!(track[header::CONTENT_TYPE], "audio/mpeg");
        assert_eq!(
            track[header::CONTENT_DISPOSITION],
            "attachment; filename=\"_r_ - _n.mp3\"; filename*=UTF-8''%C3%86r%C3%B8%20-%20%C3%96n.mp3"
        );
    }
}
