//! The body of `/auth/token` and `/auth/refresh`: which OAuth grant, and its required fields.

use std::fmt;

use serde_json::{Map, Value};
use xomcloud_common::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `authorization_code` (+ PKCE verifier) → tokens.
    Token,
    /// `refresh_token` → a fresh access token.
    Refresh,
}

impl Operation {
    /// `…/refresh` is a refresh whatever precedes it (a REST stage, a base path mapping);
    /// anything else is a token exchange.
    pub fn from_path(path: &str) -> Self {
        if path.ends_with("/refresh") {
            Self::Refresh
        } else {
            Self::Token
        }
    }

    fn from_body(value: Option<&Value>) -> Option<Self> {
        match value.and_then(Value::as_str) {
            Some("token") => Some(Self::Token),
            Some("refresh") => Some(Self::Refresh),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Token => "token",
            Self::Refresh => "refresh",
        }
    }
}

/// A validated grant. Its fields are credentials: there is no `Debug`.
pub enum Grant {
    AuthorizationCode {
        code: String,
        code_verifier: String,
        redirect_uri: String,
    },
    RefreshToken {
        refresh_token: String,
    },
}

impl Grant {
    pub fn operation(&self) -> Operation {
        match self {
            Self::AuthorizationCode { .. } => Operation::Token,
            Self::RefreshToken { .. } => Operation::Refresh,
        }
    }

    /// The form SoundCloud's token endpoint takes, client credentials first.
    pub fn form(self, client_id: String, client_secret: String) -> Form {
        let (grant_type, grant_fields) = match self {
            Self::AuthorizationCode {
                code,
                code_verifier,
                redirect_uri,
            } => (
                "authorization_code",
                vec![
                    ("code", code),
                    ("code_verifier", code_verifier),
                    ("redirect_uri", redirect_uri),
                ],
            ),
            Self::RefreshToken { refresh_token } => {
                ("refresh_token", vec![("refresh_token", refresh_token)])
            }
        };
        let mut fields = vec![
            ("grant_type", grant_type.to_owned()),
            ("client_id", client_id),
            ("client_secret", client_secret),
        ];
        fields.extend(grant_fields);
        Form(fields)
    }
}

/// The `application/x-www-form-urlencoded` fields sent upstream. `Debug` names the fields only,
/// so a form that ends up in a log line leaks no value.
pub struct Form(Vec<(&'static str, String)>);

impl Form {
    pub fn fields(&self) -> &[(&'static str, String)] {
        &self.0
    }

    pub fn field_names(&self) -> Vec<&'static str> {
        self.0.iter().map(|(name, _)| *name).collect()
    }
}

impl fmt::Debug for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Form").field(&self.field_names()).finish()
    }
}

/// Parses the JSON body. The path chose `operation`; a body `"operation": "token" | "refresh"`
/// overrides it. An empty body counts as `{}` (its fields are then reported missing).
pub fn parse(body: &[u8], operation: Operation) -> Result<Grant, ApiError> {
    let root = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        // Line and column only: serde's messages may quote the input, which holds credentials.
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::validation(format!(
                "Request body is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            ))
        })?;
        match value {
            Value::Object(root) => root,
            Value::Null => Map::new(),
            _ => return Err(ApiError::validation("Request body must be a JSON object")),
        }
    };
    match Operation::from_body(root.get("operation")).unwrap_or(operation) {
        Operation::Token => Ok(Grant::AuthorizationCode {
            code: required(&root, "code")?,
            code_verifier: required(&root, "code_verifier")?,
            redirect_uri: required(&root, "redirect_uri")?,
        }),
        Operation::Refresh => Ok(Grant::RefreshToken {
            refresh_token: required(&root, "refresh_token")?,
        }),
    }
}

/// A non-blank string, trimmed; absent, `null` and blank are all "missing".
fn required(root: &Map<String, Value>, field: &str) -> Result<String, ApiError> {
    match root.get(field) {
        None | Some(Value::Null) => Err(missing(field)),
        Some(Value::String(s)) if s.trim().is_empty() => Err(missing(field)),
        Some(Value::String(s)) => Ok(s.trim().to_owned()),
        Some(_) => Err(ApiError::validation(format!(
            "Field '{field}' must be a string"
        ))),
    }
}

fn missing(field: &str) -> ApiError {
    ApiError::validation(format!("Missing required field: {field}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &str, operation: Operation) -> String {
        match parse(body.as_bytes(), operation) {
            Ok(_) => panic!("{body} was accepted"),
            Err(err) => {
                assert_eq!(err.code(), "VALIDATION_ERROR");
                err.public_message().to_owned()
            }
        }
    }

    fn form_of(body: &str, operation: Operation) -> Vec<(&'static str, String)> {
        let grant = parse(body.as_bytes(), operation).unwrap_or_else(|e| panic!("{e}"));
        grant.form("id".into(), "secret".into()).0
    }

    #[test]
    fn the_path_picks_the_operation() {
        assert_eq!(Operation::from_path("/auth/refresh"), Operation::Refresh);
        assert_eq!(
            Operation::from_path("/prod/auth/refresh"),
            Operation::Refresh
        );
        assert_eq!(Operation::from_path("/auth/token"), Operation::Token);
        assert_eq!(Operation::from_path(""), Operation::Token);
        assert_eq!(Operation::from_path("/auth/refresh/"), Operation::Token);
    }

    #[test]
    fn a_token_form_has_every_field_trimmed() {
        let body = r#"{"code":" c1 ","code_verifier":"v1","redirect_uri":"https://x/cb"}"#;
        let pairs = |form: &[(&'static str, String)]| {
            form.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            pairs(&form_of(body, Operation::Token)),
            [
                "grant_type=authorization_code",
                "client_id=id",
                "client_secret=secret",
                "code=c1",
                "code_verifier=v1",
                "redirect_uri=https://x/cb"
            ]
        );
        assert_eq!(
            pairs(&form_of(r#"{"refresh_token":"r1"}"#, Operation::Refresh)),
            [
                "grant_type=refresh_token",
                "client_id=id",
                "client_secret=secret",
                "refresh_token=r1"
            ]
        );
    }

    #[test]
    fn the_body_overrides_the_path() {
        let refresh = r#"{"operation":"refresh","refresh_token":"r"}"#;
        assert_eq!(form_of(refresh, Operation::Token)[0].1, "refresh_token");
        let token = r#"{"operation":"token","code":"c","code_verifier":"v","redirect_uri":"u"}"#;
        assert_eq!(
            form_of(token, Operation::Refresh)[0].1,
            "authorization_code"
        );
        // Anything else is ignored: the path decides.
        let other = r#"{"operation":"revoke","refresh_token":"r"}"#;
        assert_eq!(form_of(other, Operation::Refresh)[0].1, "refresh_token");
    }

    #[test]
    fn missing_blank_null_and_non_strings_are_named() {
        let t = Operation::Token;
        assert_eq!(message("", t), "Missing required field: code");
        assert_eq!(message("null", t), "Missing required field: code");
        assert_eq!(
            message(r#"{"code":"  ","code_verifier":"v","redirect_uri":"u"}"#, t),
            "Missing required field: code"
        );
        assert_eq!(
            message(r#"{"code":"c","code_verifier":null,"redirect_uri":"u"}"#, t),
            "Missing required field: code_verifier"
        );
        assert_eq!(
            message(r#"{"code":"c","code_verifier":"v"}"#, t),
            "Missing required field: redirect_uri"
        );
        assert_eq!(
            message(r#"{"code":5,"code_verifier":"v","redirect_uri":"u"}"#, t),
            "Field 'code' must be a string"
        );
        assert_eq!(
            message(r#"{"refresh_token":["r"]}"#, Operation::Refresh),
            "Field 'refresh_token' must be a string"
        );
    }

    #[test]
    fn bodies_that_are_not_objects_are_refused_without_quoting_them() {
        let err = message(r#"{"code": "leaky-code""#, Operation::Token);
        assert!(err.starts_with("Request body is not valid JSON"), "{err}");
        assert!(!err.contains("leaky"), "{err}");
        assert_eq!(
            message(r#"["code"]"#, Operation::Token),
            "Request body must be a JSON object"
        );
    }

    #[test]
    fn a_form_debugs_as_its_field_names() {
        let form = parse(br#"{"refresh_token":"rt-value"}"#, Operation::Refresh)
            .map(|g| g.form("id-value".into(), "secret-value".into()))
            .unwrap_or_else(|e| panic!("{e}"));
        let debug = format!("{form:?}");
        assert_eq!(
            debug,
            r#"Form(["grant_type", "client_id", "client_secret", "refresh_token"])"#
        );
    }
}
