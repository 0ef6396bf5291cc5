//! API Gateway (REST v1, HTTP API v2) and Function URL events → `DownloadService`.

use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::Value;

use crate::service::DownloadService;

/// The authorizer's principal: REST `principalId`, HTTP API lambda context `sub` or JWT `sub`.
pub fn principal(request: &Request) -> Option<String> {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    match request.request_context_ref()? {
        RequestContext::ApiGatewayV1(ctx) => {
            let fields = &ctx.authorizer.fields;
            text(fields.get("principalId")).or_else(|| text(fields.get("sub")))
        }
        RequestContext::ApiGatewayV2(ctx) => {
            let authorizer = ctx.authorizer.as_ref()?;
            text(authorizer.fields.get("sub")).or_else(|| {
                authorizer
                    .jwt
                    .as_ref()
                    .and_then(|jwt| jwt.claims.get("sub").cloned())
            })
        }
        _ => None,
    }
}

pub async fn respond(service: &DownloadService, request: Request) -> Response<Body> {
    let principal = principal(&request);
    let body: &[u8] = match request.body() {
        Body::Empty => &[],
        Body::Text(text) => text.as_bytes(),
        Body::Binary(bytes) => bytes,
        _ => &[],
    };
    let response = service
        .handle(request.method(), body, principal.as_deref())
        .await;
    response.map(Body::Text)
}
