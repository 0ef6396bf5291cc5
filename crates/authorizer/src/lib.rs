//! The JWT authorizer: verifies an HS256 bearer token and answers API Gateway in the format
//! of the event it was given.

pub mod jwt;
pub mod policy;

use serde_json::Value;
use xomcloud_common::config::{Secret, Secrets};
use xomcloud_common::logging::mask;

pub use jwt::{verify, AuthError, Principal, Rules};

/// The one failure API Gateway understands as 401 (a Deny policy would be 403).
#[derive(Debug, thiserror::Error)]
#[error("Unauthorized")]
pub struct Unauthorized;

impl From<Unauthorized> for lambda_runtime::Diagnostic {
    fn from(_: Unauthorized) -> Self {
        Self {
            error_type: "Unauthorized".into(),
            error_message: "Unauthorized".into(),
        }
    }
}

pub struct Authorizer {
    secrets: Secrets,
    rules: Rules,
}

impl Authorizer {
    pub fn new(secrets: Secrets, rules: Rules) -> Self {
        Self { secrets, rules }
    }

    /// Verifies with the current secret (the SSM cache picks up a rotation within its TTL).
    pub async fn principal(&self, authorization: Option<&str>) -> Result<Principal, Unauthorized> {
        let secret = self.secrets.get(Secret::ApiSecretKey).await.map_err(|e| {
            tracing::error!(error = %e, "cannot verify tokens: no secret");
            Unauthorized
        })?;
        let header = authorization.ok_or_else(|| {
            tracing::info!(decision = "deny", reason = "missing token");
            Unauthorized
        })?;
        match jwt::verify(header, secret.as_bytes(), &self.rules) {
            Ok(p) => {
                tracing::info!(decision = "allow", sub = %mask(&p.sub));
                Ok(p)
            }
            Err(e) => {
                tracing::info!(decision = "deny", reason = %e);
                Err(Unauthorized)
            }
        }
    }

    pub async fn handle(&self, event: Value) -> Result<Value, Unauthorized> {
        let Some(request) = policy::parse(&event) else {
            tracing::warn!("not an API Gateway authorizer event");
            return Err(Unauthorized);
        };
        let principal = self.principal(request.authorization.as_deref()).await;
        match request.format {
            policy::Format::HttpV2 => Ok(policy::simple(
                principal.ok().as_ref().map(|p| p.sub.as_str()),
            )),
            policy::Format::Rest { method_arn } => {
                let principal = principal?;
                let resource = policy::stage_resource(&method_arn).ok_or_else(|| {
                    tracing::warn!("methodArn is not an execute-api ARN");
                    Unauthorized
                })?;
                Ok(policy::allow_policy(&principal.sub, &resource))
            }
        }
    }
}
