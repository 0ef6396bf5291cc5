//! API Gateway (REST v1, HTTP API v2) and Function URL events → the download endpoint, or the
//! jobs API for `…/jobs` and `…/jobs/{id}` (any stage prefix).

use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use serde_json::Value;
use xomcloud_common::ApiError;

use crate::jobs::{JobsApi, JobsRequest};
use crate::service::DownloadService;

/// What the HTTP function serves. Without a job store and queue (`JOBS_TABLE`,
/// `JOBS_QUEUE_URL`), `/jobs` answers 404 and `/download` works as before.
pub struct Http {
    pub download: std::sync::Arc<DownloadService>,
    pub jobs: Option<JobsApi>,
}

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

/// The client's address as API Gateway saw it: REST `requestContext.identity.sourceIp`, HTTP
/// API `requestContext.http.sourceIp`.
pub fn source_ip(request: &Request) -> Option<String> {
    match request.request_context_ref()? {
        RequestContext::ApiGatewayV1(ctx) => ctx.identity.source_ip.clone(),
        RequestContext::ApiGatewayV2(ctx) => ctx.http.source_ip.clone(),
        _ => None,
    }
}

/// Splits a path at its last `jobs` segment: `/prod/jobs/abc` → (`/prod/jobs`, `/abc`). `None`
/// when the path is not the jobs API's (at most one segment may follow `jobs`).
pub fn split_jobs_path(path: &str) -> Option<(&str, &str)> {
    let trimmed = path.trim_end_matches('/');
    let (head, last) = trimmed.rsplit_once('/')?;
    if last == "jobs" {
        return Some((trimmed, ""));
    }
    let (_, parent) = head.rsplit_once('/')?;
    (parent == "jobs").then(|| trimmed.split_at(head.len()))
}

/// The absolute URL of `/jobs` as the caller used it: the API's domain and the path with its
/// stage prefix.
fn jobs_url(request: &Request) -> String {
    let (domain, path) = match request.request_context_ref() {
        Some(RequestContext::ApiGatewayV1(ctx)) => (ctx.domain_name.clone(), ctx.path.clone()),
        Some(RequestContext::ApiGatewayV2(ctx)) => (ctx.domain_name.clone(), ctx.http.path.clone()),
        _ => (None, None),
    };
    let domain = domain
        .or_else(|| {
            let host = request.headers().get(http::header::HOST)?;
            host.to_str().ok().map(str::to_owned)
        })
        .unwrap_or_default();
    let path = path.unwrap_or_else(|| request.uri().path().to_owned());
    let base = split_jobs_path(&path).map_or("/jobs", |(base, _)| base);
    format!("https://{domain}{base}")
}

fn body_of(request: &Request) -> &[u8] {
    match request.body() {
        Body::Text(text) => text.as_bytes(),
        Body::Binary(bytes) => bytes,
        _ => &[],
    }
}

pub async fn respond(http: &Http, request: Request) -> Response<Body> {
    let principal = principal(&request);
    let address = source_ip(&request);
    let body = body_of(&request);
    let path = request.uri().path().to_owned();
    let response = match split_jobs_path(&path) {
        None => {
            http.download
                .handle(
                    request.method(),
                    body,
                    principal.as_deref(),
                    address.as_deref(),
                )
                .await
        }
        Some((_, rest)) => match &http.jobs {
            None => http
                .download
                .cors
                .error(&ApiError::NotFound("jobs are not configured".into())),
            Some(jobs) => {
                let jobs_url = jobs_url(&request);
                let idempotency_key = crate::jobs::api::idempotency_key(request.headers());
                let call = JobsRequest {
                    rest,
                    body,
                    principal: principal.as_deref(),
                    address: address.as_deref(),
                    idempotency_key,
                    jobs_url: &jobs_url,
                };
                jobs.handle(request.method(), &call).await
            }
        },
    };
    response.map(Body::Text)
}

#[cfg(test)]
mod tests {
    use super::split_jobs_path;

    #[test]
    fn jobs_paths_under_any_prefix() {
        assert_eq!(split_jobs_path("/jobs"), Some(("/jobs", "")));
        assert_eq!(split_jobs_path("/prod/jobs/"), Some(("/prod/jobs", "")));
        assert_eq!(
            split_jobs_path("/prod/jobs/abc"),
            Some(("/prod/jobs", "/abc"))
        );
        assert_eq!(split_jobs_path("/jobs/abc"), Some(("/jobs", "/abc")));
        assert_eq!(split_jobs_path("/download"), None);
        assert_eq!(split_jobs_path("/dev/download/tracks"), None);
        assert_eq!(split_jobs_path("/jobs/a/b"), None);
        assert_eq!(split_jobs_path("/"), None);
    }
}
