//! API responses: `{"data": …}` / `{"success": true}` / the error envelope, always with CORS.

use http::{header, HeaderValue, Response, StatusCode};
use serde_json::Value;

use crate::error::ApiError;

pub const DEFAULT_ALLOW_ORIGIN: &str = "https://xomcloud.xomware.com";
/// The headers the XOMCLOUD infrastructure's API Gateway allows (the real front end may send any
/// of them), and the jobs API's `Idempotency-Key`.
pub const ALLOW_HEADERS: &str = "Authorization,Content-Type,X-Amz-Date,X-Amz-Security-Token,X-Api-Key,Origin,Accept,Access-Control-Allow-Origin,Accept-Language,Idempotency-Key";
pub const ALLOW_METHODS: &str = "GET,POST,DELETE,OPTIONS";
/// Headers scripts in the browser may read: a job's `202` names its status URL in `Location`;
/// creations carry the caller's budget (`RateLimit-Policy`, `RateLimit`) and a 429 when to
/// retry (`Retry-After`).
pub const EXPOSE_HEADERS: &str = "Location,Retry-After,RateLimit,RateLimit-Policy";

/// The CORS policy: one allowed origin, never `*` (the API takes credentials).
#[derive(Clone, Debug)]
pub struct Cors {
    allow_origin: HeaderValue,
}

impl Cors {
    /// `None`, empty, `*` or a value that is not a valid header fall back to the default origin.
    pub fn new(origin: Option<&str>) -> Self {
        let origin = origin
            .map(str::trim)
            .filter(|o| !o.is_empty() && *o != "*")
            .and_then(|o| HeaderValue::from_str(o).ok());
        Self {
            allow_origin: origin.unwrap_or(HeaderValue::from_static(DEFAULT_ALLOW_ORIGIN)),
        }
    }

    pub fn allow_origin(&self) -> &str {
        self.allow_origin.to_str().unwrap_or(DEFAULT_ALLOW_ORIGIN)
    }

    fn apply(&self, response: &mut Response<String>) {
        let headers = response.headers_mut();
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            self.allow_origin.clone(),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(ALLOW_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOW_METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }

    pub fn json(&self, status: u16, body: &Value) -> Response<String> {
        let mut response = Response::new(body.to_string());
        *response.status_mut() =
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.apply(&mut response);
        response
    }

    /// 200 `{"data": data}`, or `{"success": true}` when there is no data.
    pub fn ok(&self, data: Option<Value>) -> Response<String> {
        let body = match data {
            Some(data) => serde_json::json!({ "data": data }),
            None => serde_json::json!({ "success": true }),
        };
        self.json(200, &body)
    }

    pub fn error(&self, err: &ApiError) -> Response<String> {
        self.json(err.status(), &err.to_body())
    }

    /// The answer to an `OPTIONS` preflight.
    pub fn preflight(&self) -> Response<String> {
        let mut response = Response::new(String::new());
        *response.status_mut() = StatusCode::NO_CONTENT;
        response.headers_mut().insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
        self.apply(&mut response);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a Response<String>, name: &str) -> &'a str {
        r.headers().get(name).unwrap().to_str().unwrap()
    }

    #[test]
    fn success_wraps_data_and_sets_cors() {
        let cors = Cors::new(None);
        let r = cors.ok(Some(serde_json::json!({"x": 1})));
        assert_eq!(r.status(), 200);
        assert_eq!(r.body(), r#"{"data":{"x":1}}"#);
        assert_eq!(
            header(&r, "access-control-allow-origin"),
            DEFAULT_ALLOW_ORIGIN
        );
        assert_eq!(header(&r, "access-control-allow-headers"), ALLOW_HEADERS);
        assert!(ALLOW_HEADERS.contains("X-Amz-Security-Token"));
        assert_eq!(
            header(&r, "access-control-allow-methods"),
            "GET,POST,DELETE,OPTIONS"
        );
        assert_eq!(
            header(&r, "access-control-expose-headers"),
            "Location,Retry-After,RateLimit,RateLimit-Policy"
        );
        assert_eq!(header(&r, "content-type"), "application/json");
        assert_eq!(cors.ok(None).body(), r#"{"success":true}"#);
    }

    #[test]
    fn origin_is_configurable_but_never_a_wildcard() {
        assert_eq!(
            Cors::new(Some("http://localhost:4200")).allow_origin(),
            "http://localhost:4200"
        );
        assert_eq!(Cors::new(Some("*")).allow_origin(), DEFAULT_ALLOW_ORIGIN);
        assert_eq!(Cors::new(Some("  ")).allow_origin(), DEFAULT_ALLOW_ORIGIN);
    }

    #[test]
    fn errors_use_the_envelope_and_status() {
        let r = Cors::new(None).error(&ApiError::validation("tracks[0]: url is required"));
        assert_eq!(r.status(), 400);
        let body: Value = serde_json::from_str(r.body()).unwrap();
        assert_eq!(body["error"]["code"], "VALIDATION_ERROR");
        assert_eq!(body["error"]["message"], "tracks[0]: url is required");
        assert_eq!(
            header(&r, "access-control-allow-origin"),
            DEFAULT_ALLOW_ORIGIN
        );
    }

    #[test]
    fn preflight_is_empty_with_cors() {
        let r = Cors::new(None).preflight();
        assert_eq!(r.status(), 204);
        assert!(r.body().is_empty());
        assert_eq!(header(&r, "access-control-allow-methods"), ALLOW_METHODS);
    }
}
