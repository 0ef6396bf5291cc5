use std::sync::Arc;

use lambda_http::{service_fn, Request};
use xomcloud_common::config::{aws_config, env_then_ssm, Settings};
use xomcloud_common::storage::S3Storage;
use xomcloud_download_tracks::{lambda, service::DownloadService};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    xomcloud_common::logging::init();
    let settings = Settings::from_env()?;
    let sdk = aws_config().await;
    let storage = S3Storage::new(
        &sdk,
        settings.bucket_or_default(),
        settings.s3_endpoint.is_some(),
    );
    let service = DownloadService::new(
        &settings,
        Arc::new(storage),
        env_then_ssm(&sdk, &settings.ssm_prefix),
    );
    let service = &service;
    lambda_http::run(service_fn(move |request: Request| async move {
        Ok::<_, std::convert::Infallible>(lambda::respond(service, request).await)
    }))
    .await
}
