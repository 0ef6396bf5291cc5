//! HS256 JWT verification (and minting, for the CLI and tests). One verifier serves the
//! authorizer Lambda and the local dev server.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Tokens larger than this are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing token")]
    Missing,
    #[error("token larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("invalid token: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// Optional unless `Rules::require_exp`: the real front end sends a static token without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
}

/// What a verified token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub sub: String,
}

/// The principal of a token without a `sub`.
pub const DEFAULT_PRINCIPAL: &str = "xomcloud";

/// Verification rules besides the secret.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub leeway_seconds: u64,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    /// `JWT_REQUIRE_EXP`: refuse tokens without `exp`. Off by default, as the original backend
    /// (PyJWT's defaults) accepts them; an `exp` that is present is always checked.
    pub require_exp: bool,
}

impl From<&xomcloud_common::config::Settings> for Rules {
    fn from(settings: &xomcloud_common::config::Settings) -> Self {
        Self {
            leeway_seconds: settings.jwt_leeway_seconds,
            issuer: settings.jwt_issuer.clone(),
            audience: settings.jwt_audience.clone(),
            require_exp: settings.jwt_require_exp,
        }
    }
}

impl Rules {
    fn validation(&self) -> Validation {
        // HS256 only: a token whose header names another algorithm (none, HS512, RS256…) fails.
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = self.leeway_seconds;
        v.validate_exp = true;
        v.validate_nbf = true;
        // A configured iss/aud must be present, not merely right when present.
        let mut required = Vec::new();
        if self.require_exp {
            required.push("exp");
        }
        match &self.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                required.push("aud");
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
            required.push("iss");
        }
        v.set_required_spec_claims(&required);
        v
    }
}

/// Takes `Bearer <jwt>` (any case) or a bare token.
pub fn strip_bearer(header: &str) -> &str {
    let header = header.trim();
    match header.split_once(' ') {
        Some((scheme, rest)) if scheme.eq_ignore_ascii_case("bearer") => rest.trim(),
        _ => header,
    }
}

pub fn verify(header: &str, secret: &[u8], rules: &Rules) -> Result<Principal, AuthError> {
    if header.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    let token = strip_bearer(header);
    if token.is_empty() {
        return Err(AuthError::Missing);
    }
    let data = decode::<Claims>(
        token,
        &DecodingKey::from_secret(secret),
        &rules.validation(),
    )
    .map_err(|e| AuthError::Invalid(e.kind_name()))?;
    let sub = data
        .claims
        .sub
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| DEFAULT_PRINCIPAL.to_owned());
    Ok(Principal { sub })
}

trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for jsonwebtoken::errors::Error {
    /// The error kind without any token content.
    fn kind_name(&self) -> String {
        let kind = format!("{:?}", self.kind());
        kind.split(['(', ' ', '{'])
            .next()
            .unwrap_or("Unknown")
            .to_owned()
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Mints an HS256 token for `sub` valid for `ttl_seconds`.
pub fn mint(sub: &str, secret: &[u8], ttl_seconds: u64) -> Result<String, AuthError> {
    let iat = now();
    let claims = Claims {
        sub: Some(sub.to_owned()),
        exp: Some(iat + ttl_seconds),
        iat: Some(iat),
    };
    encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Invalid(e.kind_name()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;

    const SECRET: &[u8] = b"test-secret";

    fn token(alg: Algorithm, claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn b64(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn accepts_good_tokens_in_every_form() {
        let t = mint("alice", SECRET, 60).unwrap();
        let r = Rules::default();
        for header in [
            t.clone(),
            format!("Bearer {t}"),
            format!("bearer {t}"),
            format!("BEARER  {t} "),
        ] {
            assert_eq!(verify(&header, SECRET, &r).unwrap().sub, "alice");
        }
    }

    #[test]
    fn sub_defaults_to_xomcloud() {
        let t = token(Algorithm::HS256, json!({"exp": now() + 60}), SECRET);
        assert_eq!(
            verify(&t, SECRET, &Rules::default()).unwrap().sub,
            "xomcloud"
        );
    }

    #[test]
    fn rejects_other_algorithms() {
        let claims = json!({"sub": "a", "exp": now() + 60});
        for alg in [Algorithm::HS384, Algorithm::HS512] {
            let t = token(alg, claims.clone(), SECRET);
            assert!(verify(&t, SECRET, &Rules::default()).is_err(), "{alg:?}");
        }
        let none = format!(
            "{}.{}.",
            b64(&json!({"alg": "none", "typ": "JWT"})),
            b64(&claims)
        );
        assert!(verify(&none, SECRET, &Rules::default()).is_err());
        // Key confusion: an RS256/ES256 header "signed" with the HMAC secret.
        for alg in ["RS256", "ES256"] {
            let head = b64(&json!({"alg": alg, "typ": "JWT"}));
            let t = format!("{head}.{}.c2lnbmF0dXJl", b64(&claims));
            assert!(verify(&t, SECRET, &Rules::default()).is_err(), "{alg}");
        }
    }

    #[test]
    fn rejects_bad_signatures_and_garbage() {
        let t = mint("alice", SECRET, 60).unwrap();
        assert!(verify(&t, b"wrong", &Rules::default()).is_err());
        let mut tampered = t.clone().into_bytes();
        let i = tampered.len() - 3;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        assert!(verify(
            &String::from_utf8(tampered).unwrap(),
            SECRET,
            &Rules::default()
        )
        .is_err());
        for junk in [
            "",
            "Bearer",
            "Bearer ",
            "abc",
            "a.b.c",
            "....",
            "Basic dXNlcjpwYXNz",
        ] {
            assert!(verify(junk, SECRET, &Rules::default()).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn time_rules_with_leeway() {
        let expired = token(
            Algorithm::HS256,
            json!({"sub": "a", "exp": now() - 30}),
            SECRET,
        );
        assert!(verify(&expired, SECRET, &Rules::default()).is_err());
        let lenient = Rules {
            leeway_seconds: 60,
            ..Rules::default()
        };
        assert!(verify(&expired, SECRET, &lenient).is_ok());
        let early = token(
            Algorithm::HS256,
            json!({"sub": "a", "exp": now() + 600, "nbf": now() + 300}),
            SECRET,
        );
        assert!(verify(&early, SECRET, &Rules::default()).is_err());
    }

    #[test]
    fn exp_is_optional_unless_required() {
        let no_exp = token(Algorithm::HS256, json!({"sub": "a"}), SECRET);
        assert_eq!(verify(&no_exp, SECRET, &Rules::default()).unwrap().sub, "a");
        let strict = Rules {
            require_exp: true,
            ..Rules::default()
        };
        assert!(verify(&no_exp, SECRET, &strict).is_err());
        let fresh = token(
            Algorithm::HS256,
            json!({"sub": "a", "exp": now() + 60}),
            SECRET,
        );
        assert!(verify(&fresh, SECRET, &strict).is_ok());
        let expired = token(
            Algorithm::HS256,
            json!({"sub": "a", "exp": now() - 30}),
            SECRET,
        );
        assert!(verify(&expired, SECRET, &Rules::default()).is_err());
        // A present exp that is not a number is refused either way.
        let bad = token(Algorithm::HS256, json!({"sub": "a", "exp": "soon"}), SECRET);
        assert!(verify(&bad, SECRET, &Rules::default()).is_err());
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let rules = Rules {
            issuer: Some("xomware".into()),
            audience: Some("xomcloud-api".into()),
            ..Rules::default()
        };
        let ok = token(
            Algorithm::HS256,
            json!({"sub": "a", "exp": now() + 60, "iss": "xomware", "aud": "xomcloud-api"}),
            SECRET,
        );
        assert!(verify(&ok, SECRET, &rules).is_ok());
        let wrong_iss = token(
            Algorithm::HS256,
            json!({"sub": "a", "exp": now() + 60, "iss": "evil", "aud": "xomcloud-api"}),
            SECRET,
        );
        assert!(verify(&wrong_iss, SECRET, &rules).is_err());
        let wrong_aud = token(
            Algorithm::HS256,
            json!({"sub": "a", "exp": now() + 60, "iss": "xomware", "aud": "other"}),
            SECRET,
        );
        assert!(verify(&wrong_aud, SECRET, &rules).is_err());
        let missing = token(
            Algorithm::HS256,
            json!({"sub": "a", "exp": now() + 60}),
            SECRET,
        );
        assert!(
            verify(&missing, SECRET, &rules).is_err(),
            "iss/aud required once configured"
        );
        // Without configuration, iss/aud are not checked.
        assert!(verify(&wrong_aud, SECRET, &Rules::default()).is_ok());
    }

    #[test]
    fn refuses_huge_tokens_before_parsing() {
        let huge = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert_eq!(
            verify(&huge, SECRET, &Rules::default()),
            Err(AuthError::TooLarge)
        );
    }
}
