//! API Gateway events (REST v1, HTTP API v2) → `AuthTokenService`.

use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};

use crate::service::AuthTokenService;

/// The path that picks the operation: REST `path` or HTTP API `rawPath` (what lambda_http keeps
/// as the raw path, before it adds a stage to the URI), else the request context's path.
pub fn event_path(request: &Request) -> String {
    let raw = request.raw_http_path();
    if !raw.is_empty() {
        return raw.to_owned();
    }
    let from_context = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(ctx)) => ctx.path.clone(),
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.http.path.clone(),
        _ => None,
    };
    from_context.unwrap_or_else(|| request.uri().path().to_owned())
}

pub async fn respond(service: &AuthTokenService, request: Request) -> Response<Body> {
    let path = event_path(&request);
    let body: &[u8] = match request.body() {
        Body::Empty => &[],
        Body::Text(text) => text.as_bytes(),
        Body::Binary(bytes) => bytes,
        _ => &[],
    };
    let response = service.handle(request.method(), &path, body).await;
    response.map(Body::Text)
}
