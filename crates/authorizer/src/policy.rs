//! The three API Gateway authorizer formats: REST TOKEN, REST REQUEST (IAM policy answers) and
//! HTTP API payload 2.0 (simple answers). Detected from the event itself.

use serde_json::{json, Value};

#[derive(Debug, PartialEq, Eq)]
pub enum Format {
    /// REST API (TOKEN or REQUEST): allowed → IAM policy, denied → the error `Unauthorized`.
    Rest { method_arn: String },
    /// HTTP API payload 2.0: `{"isAuthorized": bool}`.
    HttpV2,
}

/// The raw `Authorization` value an event carries (if any) and how to answer it.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub format: Format,
    pub authorization: Option<String>,
}

fn header(event: &Value, name: &str) -> Option<String> {
    event
        .get("headers")?
        .as_object()?
        .iter()
        .find_map(|(k, v)| {
            k.eq_ignore_ascii_case(name)
                .then(|| v.as_str().map(str::to_owned))
                .flatten()
        })
}

pub fn parse(event: &Value) -> Option<Request> {
    let text = |k: &str| event.get(k).and_then(Value::as_str).map(str::to_owned);
    if text("version").as_deref() == Some("2.0") {
        let from_identity = event
            .get("identitySource")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .and_then(Value::as_str)
            .map(str::to_owned);
        return Some(Request {
            format: Format::HttpV2,
            authorization: from_identity.or_else(|| header(event, "authorization")),
        });
    }
    let method_arn = text("methodArn")?;
    let authorization = match text("type").as_deref() {
        Some("TOKEN") => text("authorizationToken"),
        Some("REQUEST") => header(event, "authorization"),
        _ => return None,
    };
    Some(Request {
        format: Format::Rest { method_arn },
        authorization,
    })
}

/// `arn:aws:execute-api:{region}:{account}:{api}/{stage}/{method}/{path}` →
/// `arn:aws:execute-api:{region}:{account}:{api}/{stage}/*/*`. API Gateway caches the policy per
/// token and reuses it for every route, so it must cover the whole stage.
pub fn stage_resource(method_arn: &str) -> Option<String> {
    let (prefix, path) = method_arn.split_once('/')?;
    let stage = path.split('/').next().filter(|s| !s.is_empty())?;
    prefix
        .starts_with("arn:")
        .then(|| format!("{prefix}/{stage}/*/*"))
}

pub fn allow_policy(principal: &str, resource: &str) -> Value {
    json!({
        "principalId": principal,
        "policyDocument": {
            "Version": "2012-10-17",
            "Statement": [{
                "Action": "execute-api:Invoke",
                "Effect": "Allow",
                "Resource": resource,
            }],
        },
        "context": { "sub": principal },
    })
}

pub fn simple(authorized: Option<&str>) -> Value {
    match authorized {
        Some(sub) => json!({"isAuthorized": true, "context": {"sub": sub}}),
        None => json!({"isAuthorized": false}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:execute-api:us-east-1:123456789012:abcdef123/prod/POST/download";

    #[test]
    fn detects_token_events() {
        let e = json!({"type": "TOKEN", "authorizationToken": "Bearer x", "methodArn": ARN});
        assert_eq!(
            parse(&e),
            Some(Request {
                format: Format::Rest {
                    method_arn: ARN.into()
                },
                authorization: Some("Bearer x".into())
            })
        );
    }

    #[test]
    fn detects_request_events_with_any_header_case() {
        let e = json!({"type": "REQUEST", "methodArn": ARN, "headers": {"AuThOrIzAtIoN": "t"}});
        assert_eq!(parse(&e).unwrap().authorization.as_deref(), Some("t"));
        let e = json!({"type": "REQUEST", "methodArn": ARN, "headers": null});
        assert_eq!(parse(&e).unwrap().authorization, None);
    }

    #[test]
    fn detects_http_api_v2() {
        let e = json!({"version": "2.0", "type": "REQUEST", "identitySource": ["Bearer a"]});
        assert_eq!(parse(&e).unwrap().format, Format::HttpV2);
        assert_eq!(
            parse(&e).unwrap().authorization.as_deref(),
            Some("Bearer a")
        );
        let e = json!({"version": "2.0", "headers": {"authorization": "b"}});
        assert_eq!(parse(&e).unwrap().authorization.as_deref(), Some("b"));
    }

    #[test]
    fn unknown_events_are_none() {
        assert_eq!(parse(&json!({"hello": "world"})), None);
        assert_eq!(parse(&json!({"type": "TOKEN"})), None);
    }

    #[test]
    fn resource_covers_the_stage() {
        assert_eq!(
            stage_resource(ARN).unwrap(),
            "arn:aws:execute-api:us-east-1:123456789012:abcdef123/prod/*/*"
        );
        assert_eq!(stage_resource("nonsense"), None);
        assert_eq!(stage_resource("arn:x/"), None);
    }

    #[test]
    fn policy_shape() {
        let p = allow_policy("alice", "arn:r");
        assert_eq!(p["principalId"], "alice");
        assert_eq!(p["policyDocument"]["Statement"][0]["Effect"], "Allow");
        assert_eq!(
            p["policyDocument"]["Statement"][0]["Action"],
            "execute-api:Invoke"
        );
        assert_eq!(p["context"]["sub"], "alice");
        assert_eq!(simple(None), json!({"isAuthorized": false}));
    }
}
