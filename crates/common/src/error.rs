//! The one error type of the API: every failure a client can see maps to one variant.

use serde_json::Value;

/// An error as the API reports it: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    Auth(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// The request contradicts the resource's state (cancelling a finished job).
    #[error("{0}")]
    Conflict(String),
    /// The caller is over a per-caller limit; the answer also carries `Retry-After` and the
    /// `RateLimit` fields.
    #[error("{0}")]
    RateLimited(String),
    #[error("{message}")]
    Download {
        message: String,
        details: Option<Value>,
    },
    /// An upstream service answered badly or not at all; the status is what the client gets.
    #[error("{message}")]
    Upstream { status: u16, message: String },
    #[error("{0}")]
    UpstreamTimeout(String),
    /// A required setting or secret is missing; the message is public, so it names no value.
    #[error("{0}")]
    Config(String),
    /// The cause is logged server-side; the client only sees a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    pub fn validation(message: impl Into<String>) -> Self {
        Self::Validation(message.into())
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Validation(_) => "VALIDATION_ERROR",
            Self::Auth(_) => "AUTH_ERROR",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::NotFound(_) => "NOT_FOUND",
            Self::Conflict(_) => "CONFLICT",
            Self::RateLimited(_) => "RATE_LIMITED",
            Self::Download { .. } => "DOWNLOAD_ERROR",
            Self::Upstream { .. } => "UPSTREAM_ERROR",
            Self::UpstreamTimeout(_) => "UPSTREAM_TIMEOUT",
            Self::Config(_) => "CONFIG_ERROR",
            Self::Internal(_) => "INTERNAL_ERROR",
        }
    }

    pub fn status(&self) -> u16 {
        match self {
            Self::Validation(_) => 400,
            Self::Auth(_) => 401,
            Self::Forbidden(_) => 403,
            Self::NotFound(_) => 404,
            Self::Conflict(_) => 409,
            Self::RateLimited(_) => 429,
            // Every track failed upstream: the gateway to SoundCloud failed, not our server.
            Self::Download { .. } => 502,
            Self::Upstream { status, .. } => *status,
            Self::UpstreamTimeout(_) => 504,
            Self::Config(_) => 500,
            Self::Internal(_) => 500,
        }
    }

    /// The message a client may see.
    pub fn public_message(&self) -> &str {
        match self {
            Self::Validation(m)
            | Self::Auth(m)
            | Self::Forbidden(m)
            | Self::NotFound(m)
            | Self::Conflict(m)
            | Self::RateLimited(m) => m,
            Self::Download { message, .. } | Self::Upstream { message, .. } => message,
            Self::UpstreamTimeout(m) | Self::Config(m) => m,
            Self::Internal(_) => "An unexpected error occurred",
        }
    }

    pub fn details(&self) -> Option<&Value> {
        match self {
            Self::Download { details, .. } => details.as_ref(),
            _ => None,
        }
    }

    /// The JSON envelope. Internal causes are logged here, once, and never leave the server.
    pub fn to_body(&self) -> Value {
        if let Self::Internal(cause) = self {
            tracing::error!(cause = %cause, "internal error");
        }
        let mut error = serde_json::json!({"code": self.code(), "message": self.public_message()});
        if let Some(details) = self.details() {
            error["details"] = details.clone();
        }
        serde_json::json!({ "error": error })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_statuses() {
        let cases = [
            (ApiError::validation("x"), "VALIDATION_ERROR", 400),
            (ApiError::Auth("x".into()), "AUTH_ERROR", 401),
            (ApiError::Forbidden("x".into()), "FORBIDDEN", 403),
            (ApiError::NotFound("x".into()), "NOT_FOUND", 404),
            (ApiError::Conflict("x".into()), "CONFLICT", 409),
            (ApiError::RateLimited("x".into()), "RATE_LIMITED", 429),
            (
                ApiError::Download {
                    message: "x".into(),
                    details: None,
                },
                "DOWNLOAD_ERROR",
                502,
            ),
            (
                ApiError::Upstream {
                    status: 401,
                    message: "x".into(),
                },
                "UPSTREAM_ERROR",
                401,
            ),
            (
                ApiError::UpstreamTimeout("x".into()),
                "UPSTREAM_TIMEOUT",
                504,
            ),
            (ApiError::Config("x".into()), "CONFIG_ERROR", 500),
            (ApiError::internal("boom"), "INTERNAL_ERROR", 500),
        ];
        for (err, code, status) in cases {
            assert_eq!(err.code(), code);
            assert_eq!(err.status(), status);
        }
    }

    #[test]
    fn internal_errors_hide_their_cause() {
        let body = ApiError::internal("db password=hunter2").to_body();
        assert_eq!(body["error"]["message"], "An unexpected error occurred");
        assert!(!body.to_string().contains("hunter2"));
    }

    #[test]
    fn download_errors_carry_details() {
        let err = ApiError::Download {
            message: "All 2 downloads failed".into(),
            details: Some(serde_json::json!([{"id": "1"}])),
        };
        let body = err.to_body();
        assert_eq!(body["error"]["code"], "DOWNLOAD_ERROR");
        assert_eq!(body["error"]["details"][0]["id"], "1");
    }
}
