//! One image, two functions: the HTTP API (any handler name, the Terraform-made function's
//! `lambdas.download_tracks.handler.handler` included) and, with the image command
//! `jobs-worker` (`_HANDLER`), the SQS-triggered jobs worker.

use lambda_runtime::LambdaEvent;
use xomcloud_download_tracks::wiring;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    xomcloud_common::logging::init();
    let app = wiring::aws().await?;
    if std::env::var("_HANDLER").as_deref() == Ok(wiring::WORKER_HANDLER) {
        let worker = &app.worker()?;
        return lambda_runtime::run(lambda_runtime::service_fn(
            move |event: LambdaEvent<aws_lambda_events::sqs::SqsEvent>| async move {
                let deadline = wiring::deadline(event.context.deadline);
                Ok::<_, std::convert::Infallible>(worker.handle(event.payload, deadline).await)
            },
        ))
        .await;
    }
    let http = &app.http();
    lambda_http::run(lambda_http::service_fn(
        move |request: lambda_http::Request| async move {
            Ok::<_, std::convert::Infallible>(
                xomcloud_download_tracks::lambda::respond(http, request).await,
            )
        },
    ))
    .await
}
