use lambda_http::{service_fn, Request};
use xomcloud_auth_token::{lambda, AuthTokenService};
use xomcloud_common::config::{aws_config, env_then_ssm, Settings};

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    xomcloud_common::logging::init();
    let settings = Settings::from_env()?;
    let sdk = aws_config().await;
    let service =
        AuthTokenService::from_settings(&settings, env_then_ssm(&sdk, &settings.ssm_prefix))?;
    let service = &service;
    lambda_http::run(service_fn(move |request: Request| async move {
        Ok::<_, std::convert::Infallible>(lambda::respond(service, request).await)
    }))
    .await
}
