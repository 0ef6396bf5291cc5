//! End-to-end tests of the compiled `xomcloud-authorizer` Lambda: real processes polling the
//! in-process Runtime API, given API Gateway authorizer events in the three formats (REST TOKEN,
//! REST REQUEST, HTTP API payload 2.0), the secret from the environment or from SSM (moto).
//!
//! Each process serves many invocations; every case of a process is checked and the failures
//! are reported together at the end, with the process's logs.

mod support;

use std::cell::RefCell;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use support::bins::{tools_bin, workspace_bin};
use support::moto::Moto;
use support::runtime_api::{spawn_function, LambdaProcess, Outcome, RuntimeApi};

const BIN: &str = "xomcloud-authorizer";

/// Secrets: long (PyJWT warns below 32 bytes) and distinctive, so a leak into the logs shows.
const SECRET: &str = "e2e-env-secret-3f9c1a7b2d5e8f60a4c2";
const SSM_SECRET: &str = "e2e-ssm-secret-9b8a7c6d5e4f3a21b0d9";
const SSM_PREFIX_SECRET: &str = "e2e-prefix-secret-71c0de55aa03b9e4f8";
const WRONG_SECRET: &str = "e2e-wrong-secret-0000000000000000000";

/// Subjects: masked in logs as `alic***42` and `zq***`.
const SUB: &str = "alice-the-user-42";
const SHORT_SUB: &str = "zq9x";
/// Substrings of the subjects that masking never reveals.
const SUB_PROBES: [&str; 3] = ["alice", "user-42", "zq9"];

/// The principal of a token without `sub`.
const DEFAULT_PRINCIPAL: &str = "xomcloud";
/// The stage-wide resource derived from the fixtures' methodArn
/// `arn:aws:execute-api:us-east-1:123456789012:abcdef123/prod/POST/download`.
const RESOURCE: &str = "arn:aws:execute-api:us-east-1:123456789012:abcdef123/prod/*/*";

const ISSUER: &str = "https://auth.xomcloud.test/";
const AUDIENCE: &str = "xomcloud-api";

const PLACEHOLDER: &str = "__TOKEN__";
const MAX_TOKEN_BYTES: usize = 8 * 1024;

// ---------------------------------------------------------------------------------------------
// Events

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    RestToken,
    RestRequest,
    HttpV2,
}

const FORMATS: [Format; 3] = [Format::RestToken, Format::RestRequest, Format::HttpV2];

fn fixture(format: Format) -> Value {
    let text = match format {
        Format::RestToken => include_str!("fixtures/events/rest-token.json"),
        Format::RestRequest => include_str!("fixtures/events/rest-request.json"),
        Format::HttpV2 => include_str!("fixtures/events/http-v2.json"),
    };
    serde_json::from_str(text).expect("fixture is JSON")
}

/// The fixture with every value holding the placeholder set to `authorization` (the whole
/// `Authorization` value, e.g. `Bearer <jwt>`), or removed when `None`.
fn event(format: Format, authorization: Option<&str>) -> Value {
    let mut event = fixture(format);
    put_authorization(&mut event, authorization);
    event
}

fn is_placeholder(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains(PLACEHOLDER),
        Value::Array(items) => !items.is_empty() && items.iter().all(is_placeholder),
        _ => false,
    }
}

fn put_authorization(value: &mut Value, authorization: Option<&str>) {
    match value {
        Value::Object(map) => {
            if authorization.is_none() {
                map.retain(|_, v| !is_placeholder(v));
            }
            map.values_mut()
                .for_each(|v| put_authorization(v, authorization));
        }
        Value::Array(items) => {
            if authorization.is_none() {
                items.retain(|v| !is_placeholder(v));
            }
            items
                .iter_mut()
                .for_each(|v| put_authorization(v, authorization));
        }
        Value::String(s) if s.contains(PLACEHOLDER) => {
            *s = authorization
                .expect("placeholders are removed without a token")
                .to_owned();
        }
        _ => {}
    }
}

/// A REST REQUEST event whose Authorization header is spelled `name`.
fn rest_request_with_header(name: &str, authorization: &str) -> Value {
    let mut event = event(Format::RestRequest, None);
    event["headers"][name] = json!(authorization);
    event["multiValueHeaders"][name] = json!([authorization]);
    event
}

// ---------------------------------------------------------------------------------------------
// Tokens

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

fn claims(sub: &str) -> Value {
    let now = now();
    json!({"sub": sub, "iat": now, "exp": now + 600})
}

fn sign(alg: Algorithm, claims: &Value, secret: &str) -> String {
    encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign a token")
}

fn hs256(claims: &Value, secret: &str) -> String {
    sign(Algorithm::HS256, claims, secret)
}

fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// `alg: none`: header and payload, empty signature.
fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        b64_json(&json!({"alg": "none", "typ": "JWT"})),
        b64_json(claims)
    )
}

/// A header naming `alg`, HMAC-SHA256-signed with the secret (algorithm confusion).
fn forged_alg(alg: &str, claims: &Value, secret: &str) -> String {
    let message = format!(
        "{}.{}",
        b64_json(&json!({"alg": alg, "typ": "JWT"})),
        b64_json(claims)
    );
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret.as_bytes()),
        Algorithm::HS256,
    )
    .expect("HMAC");
    format!("{message}.{signature}")
}

/// One character in the middle of the signature changed (the middle characters carry 6 full
/// bits, so the signature bytes change).
fn tamper(token: &str) -> String {
    let dot = token.rfind('.').expect("a JWT has dots");
    let mut bytes = token.as_bytes().to_vec();
    let i = dot + 1 + (bytes.len() - dot - 1) / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).expect("ASCII")
}

/// A token minted by PyJWT (from the test tools).
fn pyjwt(claims: &Value, secret: &str) -> String {
    let python = tools_bin("python");
    let script =
        "import json, sys, jwt; print(jwt.encode(json.loads(sys.argv[1]), sys.argv[2], algorithm='HS256'))";
    let output = Command::new(&python)
        .args(["-c", script, &claims.to_string(), secret])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    assert!(
        output.status.success(),
        "PyJWT could not mint a token (run `scripts/setup.sh --test`): {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("UTF-8")
        .trim()
        .to_owned()
}

/// A valid HS256 token padded with a claim to about `bytes` bytes.
fn padded(secret: &str, bytes: usize) -> String {
    let mut claims = claims(SUB);
    // base64url: 4 characters per 3 bytes.
    claims["pad"] = json!("x".repeat(bytes * 3 / 4));
    hs256(&claims, secret)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

// ---------------------------------------------------------------------------------------------
// The function under test

/// What an invocation must answer.
#[derive(Clone, Copy, Debug)]
enum Expect<'a> {
    /// Allowed for `sub` (`None`: a token without `sub`) on `resource` (REST).
    Allow {
        sub: Option<&'a str>,
        resource: &'a str,
    },
    Deny,
}

fn allow(sub: &str) -> Expect<'_> {
    Expect::Allow {
        sub: Some(sub),
        resource: RESOURCE,
    }
}

fn format_of(event: &Value) -> Format {
    if event["version"] == "2.0" {
        Format::HttpV2
    } else if event["type"] == "TOKEN" {
        Format::RestToken
    } else {
        Format::RestRequest
    }
}

fn check(format: Format, outcome: &Outcome, expect: Expect) -> Result<(), String> {
    match (format, expect) {
        (Format::HttpV2, Expect::Allow { sub, .. }) => {
            let Outcome::Response(body) = outcome else {
                return Err(format!("expected isAuthorized true, got {outcome}"));
            };
            let ok = match sub {
                Some(sub) => *body == json!({"isAuthorized": true, "context": {"sub": sub}}),
                None => body["isAuthorized"] == json!(true),
            };
            ok.then_some(()).ok_or_else(|| {
                format!("expected isAuthorized true with context.sub {sub:?}, got {body}")
            })
        }
        (Format::HttpV2, Expect::Deny) => match outcome {
            Outcome::Response(body) if *body == json!({"isAuthorized": false}) => Ok(()),
            _ => Err(format!(
                "expected the response {{\"isAuthorized\":false}}, got {outcome}"
            )),
        },
        (_, Expect::Allow { sub, resource }) => {
            let Outcome::Response(body) = outcome else {
                return Err(format!("expected an Allow policy, got {outcome}"));
            };
            let policy = json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Action": "execute-api:Invoke",
                    "Effect": "Allow",
                    "Resource": resource,
                }],
            });
            let ok = match sub {
                Some(sub) => {
                    *body
                        == json!({
                            "principalId": sub,
                            "policyDocument": policy,
                            "context": {"sub": sub},
                        })
                }
                None => {
                    body["principalId"] == DEFAULT_PRINCIPAL && body["policyDocument"] == policy
                }
            };
            ok.then_some(()).ok_or_else(|| {
                format!(
                    "expected principal {:?} allowed on {resource}, got {body}",
                    sub.unwrap_or(DEFAULT_PRINCIPAL)
                )
            })
        }
        (_, Expect::Deny) => match outcome {
            Outcome::Error { error_message, .. } if error_message == "Unauthorized" => Ok(()),
            _ => Err(format!(
                "expected the invocation to fail with \"Unauthorized\", got {outcome}"
            )),
        },
    }
}

/// One authorizer process and its Runtime API; collects the failed cases.
struct Authorizer {
    name: String,
    runtime: RuntimeApi,
    process: LambdaProcess,
    /// Everything sent as a token, none of which may appear in the logs.
    tokens: RefCell<Vec<String>>,
    failures: RefCell<Vec<String>>,
    cases: RefCell<usize>,
}

/// Keeps the SDK away from AWS: SSM at a closed local port, static credentials, no IMDS.
fn offline_aws_env() -> Vec<(String, String)> {
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a local port")
        .port();
    [
        (
            "AWS_ENDPOINT_URL_SSM",
            format!("http://127.0.0.1:{closed_port}"),
        ),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
        ("AWS_EC2_METADATA_DISABLED", "true".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

impl Authorizer {
    /// `envs` on top of [`offline_aws_env`].
    async fn start(name: &str, envs: &[(String, String)]) -> Self {
        let bin = workspace_bin(BIN);
        let runtime = RuntimeApi::start().await;
        let mut all = offline_aws_env();
        all.extend(envs.iter().cloned());
        let pairs: Vec<(&str, &str)> = all.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let process = spawn_function(&bin, &runtime, &pairs);
        Self {
            name: name.to_owned(),
            runtime,
            process,
            tokens: RefCell::default(),
            failures: RefCell::default(),
            cases: RefCell::default(),
        }
    }

    fn remember(&self, authorization: &str) {
        let token = authorization
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_owned();
        // Short strings (malformed cases) would match by chance.
        if token.len() >= 20 {
            self.tokens.borrow_mut().push(token);
        }
    }

    async fn case(&self, case: &str, event: Value, expect: Expect<'_>) {
        *self.cases.borrow_mut() += 1;
        let format = format_of(&event);
        let outcome = self.runtime.invoke(event).await;
        if let Err(failure) = check(format, &outcome, expect) {
            self.failures
                .borrow_mut()
                .push(format!("[{format:?}] {case}: {failure}"));
        }
    }

    /// The fixture of `format` carrying `authorization`.
    async fn expect(&self, case: &str, format: Format, authorization: &str, expect: Expect<'_>) {
        self.remember(authorization);
        self.case(case, event(format, Some(authorization)), expect)
            .await;
    }

    async fn allowed(&self, case: &str, format: Format, authorization: &str, sub: &str) {
        self.expect(case, format, authorization, allow(sub)).await;
    }

    async fn denied(&self, case: &str, format: Format, authorization: &str) {
        self.expect(case, format, authorization, Expect::Deny).await;
    }

    /// Checks the logs (JSON lines on stdout; no token, secret or unmasked subject anywhere),
    /// that the process still runs, then reports every failure.
    fn finish(self, secrets: &[&str], log_must_contain: &[&str]) {
        let stdout = self.process.stdout();
        let logs = self.process.logs();
        let mut failures = self.failures.take();
        if let Some(status) = self.process.exit_status() {
            failures.push(format!("the process exited ({status})"));
        }
        if stdout.trim().is_empty() {
            failures.push("nothing logged on stdout".to_owned());
        }
        for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
            if !serde_json::from_str::<Value>(line).is_ok_and(|v| v.is_object()) {
                failures.push(format!("stdout line is not a JSON object: {line}"));
            }
        }
        for secret in secrets {
            if logs.contains(secret) {
                failures.push(format!("the logs contain the secret {secret:?}"));
            }
        }
        for token in self.tokens.borrow().iter() {
            let signature = token.rsplit('.').next().unwrap_or_default();
            if logs.contains(token.as_str()) {
                failures.push(format!("the logs contain a token: {token:.60}…"));
            } else if signature.len() >= 20 && logs.contains(signature) {
                failures.push(format!("the logs contain a token's signature: {signature}"));
            }
        }
        for probe in SUB_PROBES {
            if logs.contains(probe) {
                failures.push(format!("the logs show an unmasked subject ({probe:?})"));
            }
        }
        for needle in log_must_contain {
            if !logs.contains(needle) {
                failures.push(format!("the logs do not mention {needle:?}"));
            }
        }
        let cases = *self.cases.borrow();
        eprintln!(
            "{}: {cases} invocations, {} failures",
            self.name,
            failures.len()
        );
        assert!(
            failures.is_empty(),
            "{}: {} of the checks failed ({cases} invocations):\n  - {}\n--- authorizer output:\n{}",
            self.name,
            failures.len(),
            failures.join("\n  - "),
            tail(&logs, 20_000)
        );
    }
}

fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The cases

/// The cases every format shares, with the secret from the environment.
async fn common_cases(a: &Authorizer, f: Format) {
    let now = now();
    let good = hs256(&claims(SUB), SECRET);

    // Accepted: Bearer in any case, bare tokens, PyJWT tokens, subjects, size below the limit.
    a.allowed("Bearer token", f, &bearer(&good), SUB).await;
    a.allowed(
        "bearer (lower case) token",
        f,
        &format!("bearer {good}"),
        SUB,
    )
    .await;
    a.allowed(
        "BEARER (upper case) token",
        f,
        &format!("BEARER {good}"),
        SUB,
    )
    .await;
    a.allowed("bare token", f, &good, SUB).await;
    let short = hs256(&claims(SHORT_SUB), SECRET);
    a.allowed("short subject", f, &bearer(&short), SHORT_SUB)
        .await;
    let no_sub = hs256(&json!({"iat": now, "exp": now + 600}), SECRET);
    a.expect(
        "token without sub",
        f,
        &bearer(&no_sub),
        Expect::Allow {
            sub: None,
            resource: RESOURCE,
        },
    )
    .await;
    let py = pyjwt(&claims(SUB), SECRET);
    a.allowed("PyJWT token", f, &bearer(&py), SUB).await;
    a.allowed("4 KiB token", f, &bearer(&padded(SECRET, 4 * 1024)), SUB)
        .await;

    // Time.
    let expired = hs256(
        &json!({"sub": SUB, "iat": now - 7200, "exp": now - 3600}),
        SECRET,
    );
    a.denied("expired an hour ago", f, &bearer(&expired)).await;
    let just_expired = hs256(
        &json!({"sub": SUB, "iat": now - 600, "exp": now - 5}),
        SECRET,
    );
    a.denied(
        "expired 5 s ago (leeway 0 by default)",
        f,
        &bearer(&just_expired),
    )
    .await;
    let not_yet = hs256(
        &json!({"sub": SUB, "iat": now, "nbf": now + 600, "exp": now + 1200}),
        SECRET,
    );
    a.denied("nbf in the future", f, &bearer(&not_yet)).await;

    // Signature and algorithm.
    a.denied("tampered signature", f, &bearer(&tamper(&good)))
        .await;
    a.denied(
        "wrong secret",
        f,
        &bearer(&hs256(&claims(SUB), WRONG_SECRET)),
    )
    .await;
    a.denied(
        "alg none, empty signature",
        f,
        &bearer(&alg_none(&claims(SUB))),
    )
    .await;
    let none_with_sig = {
        let sig = good.rsplit('.').next().unwrap();
        format!("{}{sig}", alg_none(&claims(SUB)))
    };
    a.denied("alg none, HS256 signature kept", f, &bearer(&none_with_sig))
        .await;
    a.denied(
        "HS512 with the right secret",
        f,
        &bearer(&sign(Algorithm::HS512, &claims(SUB), SECRET)),
    )
    .await;
    a.denied(
        "HS384 with the right secret",
        f,
        &bearer(&sign(Algorithm::HS384, &claims(SUB), SECRET)),
    )
    .await;
    a.denied(
        "RS256 header, HMAC signature (algorithm confusion)",
        f,
        &bearer(&forged_alg("RS256", &claims(SUB), SECRET)),
    )
    .await;
    a.denied(
        "ES256 header, HMAC signature (algorithm confusion)",
        f,
        &bearer(&forged_alg("ES256", &claims(SUB), SECRET)),
    )
    .await;

    // Size and shape.
    let huge = padded(SECRET, MAX_TOKEN_BYTES + 1024);
    assert!(huge.len() > MAX_TOKEN_BYTES);
    a.denied("valid token over 8 KiB", f, &bearer(&huge)).await;
    let (head, rest) = good.split_once('.').unwrap();
    let payload = rest.split_once('.').unwrap().0;
    for (case, value) in [
        ("not a JWT", "not-a-jwt".to_owned()),
        ("two segments", format!("{head}.{payload}")),
        ("four segments", format!("{good}.{payload}")),
        ("empty segments", "..".to_owned()),
        ("garbage segments", "a.b.c".to_owned()),
        ("Bearer without a token", "Bearer ".to_owned()),
        ("empty value", String::new()),
        ("another scheme", format!("Basic {good}")),
    ] {
        a.denied(case, f, &value).await;
    }
    a.case("no token at all", event(f, None), Expect::Deny)
        .await;
}

async fn env_secret_suite(name: &str, f: Format) -> Authorizer {
    let a = Authorizer::start(name, &env(&[("API_SECRET_KEY", SECRET)])).await;
    common_cases(&a, f).await;
    a
}

#[tokio::test]
async fn rest_token_with_env_secret() {
    let a = env_secret_suite("REST TOKEN, env secret", Format::RestToken).await;
    let good = hs256(&claims(SUB), SECRET);
    a.remember(&good);
    // The policy covers the stage of the methodArn, whatever the method and path.
    let mut other = event(Format::RestToken, Some(&bearer(&good)));
    other["methodArn"] =
        json!("arn:aws:execute-api:eu-west-3:210987654321:zyx987wvu/dev/GET/status/deep/path");
    a.case(
        "methodArn of another API, stage and route",
        other,
        Expect::Allow {
            sub: Some(SUB),
            resource: "arn:aws:execute-api:eu-west-3:210987654321:zyx987wvu/dev/*/*",
        },
    )
    .await;
    a.finish(&[SECRET], &[]);
}

#[tokio::test]
async fn rest_request_with_env_secret() {
    let a = env_secret_suite("REST REQUEST, env secret", Format::RestRequest).await;
    let good = hs256(&claims(SUB), SECRET);
    a.remember(&good);
    for name in ["authorization", "AUTHORIZATION", "aUtHoRiZaTiOn"] {
        a.case(
            &format!("header spelled {name}"),
            rest_request_with_header(name, &bearer(&good)),
            allow(SUB),
        )
        .await;
    }
    // The token comes from the Authorization header, nothing else.
    let mut elsewhere = event(Format::RestRequest, None);
    elsewhere["headers"]["X-Api-Token"] = json!(bearer(&good));
    elsewhere["queryStringParameters"]["token"] = json!(good);
    a.case("token only in other fields", elsewhere, Expect::Deny)
        .await;
    a.finish(&[SECRET], &[]);
}

#[tokio::test]
async fn http_api_v2_with_env_secret() {
    let a = env_secret_suite("HTTP API 2.0, env secret", Format::HttpV2).await;
    let good = hs256(&claims(SUB), SECRET);
    a.remember(&good);
    // No identitySource: the authorization header.
    let mut from_header = event(Format::HttpV2, Some(&bearer(&good)));
    from_header
        .as_object_mut()
        .unwrap()
        .remove("identitySource");
    a.case(
        "no identitySource, authorization header",
        from_header,
        allow(SUB),
    )
    .await;
    let mut empty_identity = event(Format::HttpV2, Some(&bearer(&good)));
    empty_identity["identitySource"] = json!([]);
    a.case(
        "empty identitySource, authorization header",
        empty_identity,
        allow(SUB),
    )
    .await;
    // identitySource[0] comes first.
    let mut precedence = event(Format::HttpV2, Some(&bearer(&good)));
    precedence["identitySource"] = json!([bearer(&tamper(&good))]);
    a.case(
        "tampered identitySource[0], good header",
        precedence,
        Expect::Deny,
    )
    .await;
    let mut identity_only = event(Format::HttpV2, None);
    identity_only["identitySource"] = json!([bearer(&good)]);
    a.case("identitySource only", identity_only, allow(SUB))
        .await;
    a.finish(&[SECRET], &[]);
}

/// The real front end sends a static token without `exp`: accepted unless `JWT_REQUIRE_EXP`
/// is on; an `exp` that is there is checked either way.
#[tokio::test]
async fn tokens_without_exp_follow_jwt_require_exp() {
    let now = now();
    let no_exp = hs256(&json!({ "sub": SUB }), SECRET);
    let pyjwt_no_exp = pyjwt(&json!({ "sub": SUB }), SECRET);
    let good = hs256(&claims(SUB), SECRET);
    let expired = hs256(&json!({"sub": SUB, "exp": now - 60}), SECRET);
    for (setting, without_exp_allowed) in
        [(None, true), (Some("false"), true), (Some("true"), false)]
    {
        let mut vars = vec![("API_SECRET_KEY", SECRET)];
        vars.extend(setting.map(|v| ("JWT_REQUIRE_EXP", v)));
        let a = Authorizer::start(&format!("JWT_REQUIRE_EXP={setting:?}"), &env(&vars)).await;
        for f in FORMATS {
            for (case, token) in [("no exp", &no_exp), ("no exp, PyJWT", &pyjwt_no_exp)] {
                if without_exp_allowed {
                    a.allowed(case, f, &bearer(token), SUB).await;
                } else {
                    a.denied(case, f, &bearer(token)).await;
                }
            }
            a.allowed("with exp", f, &bearer(&good), SUB).await;
            a.denied("expired", f, &bearer(&expired)).await;
        }
        a.finish(&[SECRET], &[]);
    }
}

#[tokio::test]
async fn issuer_audience_and_leeway() {
    let a = Authorizer::start(
        "iss/aud/leeway",
        &env(&[
            ("API_SECRET_KEY", SECRET),
            ("JWT_ISSUER", ISSUER),
            ("JWT_AUDIENCE", AUDIENCE),
            ("JWT_LEEWAY_SECONDS", "120"),
        ]),
    )
    .await;
    let now = now();
    let with = |extra: Value| {
        let mut c =
            json!({"sub": SUB, "iat": now, "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE});
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        hs256(&c, SECRET)
    };
    for f in FORMATS {
        a.allowed("right iss and aud", f, &bearer(&with(json!({}))), SUB)
            .await;
        a.allowed(
            "aud as an array holding the audience",
            f,
            &bearer(&with(json!({"aud": ["other-api", AUDIENCE]}))),
            SUB,
        )
        .await;
        a.denied(
            "wrong iss",
            f,
            &bearer(&with(json!({"iss": "https://evil.test/"}))),
        )
        .await;
        a.denied("wrong aud", f, &bearer(&with(json!({"aud": "other-api"}))))
            .await;
        a.denied("no iss", f, &bearer(&with(json!({"iss": null}))))
            .await;
        a.denied("no aud", f, &bearer(&with(json!({"aud": null}))))
            .await;
        a.allowed(
            "expired 30 s ago, leeway 120 s",
            f,
            &bearer(&with(json!({"exp": now - 30}))),
            SUB,
        )
        .await;
        a.denied(
            "expired 600 s ago, leeway 120 s",
            f,
            &bearer(&with(json!({"exp": now - 600}))),
        )
        .await;
        a.allowed(
            "nbf 30 s ahead, leeway 120 s",
            f,
            &bearer(&with(json!({"nbf": now + 30}))),
            SUB,
        )
        .await;
        a.denied(
            "nbf 600 s ahead, leeway 120 s",
            f,
            &bearer(&with(json!({"nbf": now + 600}))),
        )
        .await;
    }
    a.finish(&[SECRET], &[]);
}

#[tokio::test]
async fn secret_from_ssm() {
    let moto = Moto::start();
    moto.put_secure("/xomcloud/api/API_SECRET_KEY", SSM_SECRET)
        .await;
    moto.put_secure("/xc-e2e/api/API_SECRET_KEY", SSM_PREFIX_SECRET)
        .await;
    let stored = moto
        .ssm_client()
        .await
        .get_parameter()
        .name("/xomcloud/api/API_SECRET_KEY")
        .with_decryption(true)
        .send()
        .await
        .expect("GetParameter on moto")
        .parameter
        .expect("the parameter");
    assert_eq!(
        stored.r#type,
        Some(aws_sdk_ssm::types::ParameterType::SecureString)
    );
    assert_eq!(stored.value.as_deref(), Some(SSM_SECRET));
    let ssm_env = moto.ssm_env();

    // Default prefix, no API_SECRET_KEY in the environment.
    let a = Authorizer::start("SSM secret, default prefix", &ssm_env).await;
    for f in FORMATS {
        // Twice: the second one may come from a cache.
        for round in ["first", "second"] {
            let good = hs256(&claims(SUB), SSM_SECRET);
            a.allowed(&format!("SSM secret ({round})"), f, &bearer(&good), SUB)
                .await;
        }
        let env_signed = hs256(&claims(SUB), SECRET);
        a.denied("signed with another secret", f, &bearer(&env_signed))
            .await;
        let py = pyjwt(&claims(SUB), SSM_SECRET);
        a.allowed("PyJWT token, SSM secret", f, &bearer(&py), SUB)
            .await;
    }
    a.finish(&[SSM_SECRET, SSM_PREFIX_SECRET], &[]);

    // SSM_PREFIX.
    let mut prefixed = ssm_env.clone();
    prefixed.push(("SSM_PREFIX".into(), "/xc-e2e".into()));
    let a = Authorizer::start("SSM secret, SSM_PREFIX=/xc-e2e", &prefixed).await;
    for f in FORMATS {
        let good = hs256(&claims(SUB), SSM_PREFIX_SECRET);
        a.allowed("secret under the prefix", f, &bearer(&good), SUB)
            .await;
        let default_prefix = hs256(&claims(SUB), SSM_SECRET);
        a.denied(
            "secret under the default prefix",
            f,
            &bearer(&default_prefix),
        )
        .await;
    }
    a.finish(&[SSM_SECRET, SSM_PREFIX_SECRET], &[]);

    // The environment comes before SSM.
    let mut both = ssm_env.clone();
    both.push(("API_SECRET_KEY".into(), SECRET.into()));
    let a = Authorizer::start("env and SSM secrets", &both).await;
    for f in FORMATS {
        let env_signed = hs256(&claims(SUB), SECRET);
        a.allowed("env secret wins", f, &bearer(&env_signed), SUB)
            .await;
        let ssm_signed = hs256(&claims(SUB), SSM_SECRET);
        a.denied("SSM secret ignored", f, &bearer(&ssm_signed))
            .await;
    }
    a.finish(&[SECRET, SSM_SECRET, SSM_PREFIX_SECRET], &[]);
}

#[tokio::test]
async fn no_secret_anywhere_denies() {
    let moto = Moto::start();
    let ssm_env = moto.ssm_env();
    let a = Authorizer::start("no secret (SSM parameter missing)", &ssm_env).await;
    for f in FORMATS {
        let token = hs256(&claims(SUB), SECRET);
        a.denied("well-formed token, no secret", f, &bearer(&token))
            .await;
        a.denied("alg none, no secret", f, &bearer(&alg_none(&claims(SUB))))
            .await;
        a.case("no token, no secret", event(f, None), Expect::Deny)
            .await;
    }
    a.finish(&[SECRET], &["/xomcloud/api/API_SECRET_KEY"]);

    let mut prefixed = ssm_env.clone();
    prefixed.push(("SSM_PREFIX".into(), "/elsewhere".into()));
    let a = Authorizer::start("no secret, SSM_PREFIX=/elsewhere", &prefixed).await;
    for f in FORMATS {
        let token = hs256(&claims(SUB), SECRET);
        a.denied("well-formed token, no secret", f, &bearer(&token))
            .await;
    }
    a.finish(&[SECRET], &["/elsewhere/api/API_SECRET_KEY"]);
}

#[tokio::test]
async fn unreachable_ssm_denies() {
    // offline_aws_env points SSM at a closed port: the lookup fails, the authorizer fails closed.
    let a = Authorizer::start("SSM unreachable", &[]).await;
    for f in [Format::RestToken, Format::HttpV2] {
        let token = hs256(&claims(SUB), SECRET);
        a.denied("well-formed token, SSM unreachable", f, &bearer(&token))
            .await;
    }
    a.finish(&[SECRET], &[]);
}
