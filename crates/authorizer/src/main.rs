use lambda_runtime::{service_fn, LambdaEvent};
use serde_json::Value;
use xomcloud_authorizer::{Authorizer, Rules};
use xomcloud_common::config::{aws_config, env_then_ssm, Settings};

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    xomcloud_common::logging::init();
    let settings = Settings::from_env()?;
    let sdk = aws_config().await;
    let authorizer = Authorizer::new(
        env_then_ssm(&sdk, &settings.ssm_prefix),
        Rules::from(&settings),
    );
    let authorizer = &authorizer;
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        authorizer.handle(event.payload).await
    }))
    .await
}
