//! `xomcloud serve`: the production API on one machine. The same `DownloadService` as the
//! Lambda, the same JWT verifier as the authorizer; zips on disk behind signed links, or in S3
//! when `S3_DOWNLOAD_BUCKET_NAME` is set.

use std::process::ExitCode;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use serde::Deserialize;
use xomcloud_authorizer::{Authorizer, Rules};
use xomcloud_common::config::{self, EnvSecrets, Secret, Secrets};
use xomcloud_common::presign::{LinkError, LinkSigner};
use xomcloud_common::response::Cors;
use xomcloud_common::storage::{content_disposition, unix_now, LocalStorage, S3Storage, Storage};
use xomcloud_common::ApiError;
use xomcloud_download_tracks::service::DownloadService;

struct App {
    service: DownloadService,
    authorizer: Authorizer,
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
    // The same verifier as the authorizer Lambda, reading the secret per request.
    let authorizer = Authorizer::new(
        secrets.clone(),
        Rules {
            leeway_seconds: settings.jwt_leeway_seconds,
            issuer: settings.jwt_issuer.clone(),
            audience: settings.jwt_audience.clone(),
        },
    );
    let app = Arc::new(App {
        service: DownloadService::new(&settings, storage, secrets),
        authorizer,
        files,
        cors: Cors::new(settings.cors_allow_origin.as_deref()),
    });
    println!("xomcloud listening on {base_url}");
    match &app.files {
        Some(_) => println!(
            "storage: {} (local, signed links)",
            settings.data_dir.display()
        ),
        None => println!("storage: s3://{}", settings.bucket_or_default()),
    }
    if let Some(secret) = dev_secret {
        let token = xomcloud_authorizer::jwt::mint("dev", secret.as_bytes(), 12 * 3600)
            .map_err(|e| e.to_string())?;
        println!("API_SECRET_KEY is not set: using a random secret for this process.");
        println!("token (12 h): {token}");
        println!(
            "try: curl -sS -X POST {base_url}/download -H 'Authorization: Bearer {token}' -H 'Content-Type: application/json' \
             -d '{{\"tracks\":[{{\"id\":\"1\",\"url\":\"https://soundcloud.com/forss/flickermood\",\"title\":\"Flickermood\",\"artist\":\"Forss\"}}]}}'"
        );
    }
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn router(app: Shared) -> Router {
    Router::new()
        .route("/download", any(download))
        .route("/files/{*key}", get(file))
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

async fn download(
    State(app): State<Shared>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let principal = if method == Method::OPTIONS {
        None
    } else {
        let authorization = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match app.authorizer.principal(authorization).await {
            Ok(p) => Some(p.sub),
            Err(_) => {
                let err = ApiError::Auth("Missing or invalid token".into());
                return reply(app.cors.error(&err));
            }
        }
    };
    reply(
        app.service
            .handle(&method, &body, principal.as_deref())
            .await,
    )
}

#[derive(Deserialize)]
struct LinkQuery {
    expires: Option<u64>,
    signature: Option<String>,
}

async fn file(
    State(app): State<Shared>,
    Path(key): Path<String>,
    Query(q): Query<LinkQuery>,
) -> Response {
    let Some(files) = &app.files else {
        return not_found(State(app)).await;
    };
    let (Some(expires), Some(signature)) = (q.expires, q.signature) else {
        return reply(
            app.cors
                .error(&ApiError::Forbidden("The link is not signed".into())),
        );
    };
    if let Err(e) = files.signer().verify(&key, expires, &signature, unix_now()) {
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
    let length = file.metadata().await.map(|m| m.len()).unwrap_or(0);
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/zip".to_owned()),
            (header::CONTENT_DISPOSITION, content_disposition(&key)),
            (header::CONTENT_LENGTH, length.to_string()),
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                app.cors.allow_origin().to_owned(),
            ),
        ],
        body,
    )
        .into_response()
}

async fn not_found(State(app): State<Shared>) -> Response {
    reply(app.cors.error(&ApiError::NotFound("No such route".into())))
}
