//! The SSM secret adapter against moto's real HTTP service: SecureString decryption, the TTL
//! cache (injectable clock), and a missing parameter.

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::moto::Moto;
use xomcloud_common::config::{EnvSecrets, Secret, Secrets, SsmSecrets, SSM_CACHE_TTL};

/// A clock the test moves by hand.
fn manual_clock() -> (Arc<AtomicU64>, xomcloud_common::config::Clock) {
    let start = Instant::now();
    let offset = Arc::new(AtomicU64::new(0));
    let o = offset.clone();
    (
        offset,
        Arc::new(move || start + Duration::from_secs(o.load(Ordering::SeqCst))),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn secure_strings_are_decrypted_and_cached_for_five_minutes() {
    let moto = Moto::start();
    moto.put_secure("/xomcloud/api/API_SECRET_KEY", "first-secret")
        .await;
    let (offset, clock) = manual_clock();
    let ssm = SsmSecrets::with_clock(moto.ssm_client().await, "/xomcloud", SSM_CACHE_TTL, clock);
    let secrets = Secrets::new("/xomcloud").source(ssm);

    assert_eq!(
        secrets.get(Secret::ApiSecretKey).await.unwrap(),
        "first-secret"
    );

    // Rotated in SSM: inside the TTL the cached value is served (no second call)...
    moto.put_secure("/xomcloud/api/API_SECRET_KEY", "rotated-secret")
        .await;
    offset.store(SSM_CACHE_TTL.as_secs() - 1, Ordering::SeqCst);
    assert_eq!(
        secrets.get(Secret::ApiSecretKey).await.unwrap(),
        "first-secret"
    );

    // ...and once it has expired, the rotation is picked up.
    offset.store(SSM_CACHE_TTL.as_secs() + 1, Ordering::SeqCst);
    assert_eq!(
        secrets.get(Secret::ApiSecretKey).await.unwrap(),
        "rotated-secret"
    );
    assert_eq!(SSM_CACHE_TTL, Duration::from_secs(300));
}

#[tokio::test(flavor = "multi_thread")]
async fn env_comes_before_ssm_and_prefix_is_honoured() {
    let moto = Moto::start();
    moto.put_secure("/staging/soundcloud/CLIENT_ID", "from-ssm")
        .await;
    moto.put_secure("/staging/api/API_SECRET_KEY", "ssm-api-secret")
        .await;
    let env = EnvSecrets::default().with(Secret::ApiSecretKey, "from-env");
    let secrets = Secrets::new("/staging")
        .source(env)
        .source(SsmSecrets::new(moto.ssm_client().await, "/staging"));
    assert_eq!(secrets.get(Secret::ApiSecretKey).await.unwrap(), "from-env");
    assert_eq!(
        secrets.get(Secret::SoundcloudClientId).await.unwrap(),
        "from-ssm"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_parameter_is_a_clear_error() {
    let moto = Moto::start();
    moto.put_secure("/xomcloud/soundcloud/CLIENT_ID", "do-not-print-me")
        .await;
    let secrets =
        Secrets::new("/xomcloud").source(SsmSecrets::new(moto.ssm_client().await, "/xomcloud"));
    let err = secrets
        .get(Secret::SoundcloudClientSecret)
        .await
        .expect_err("the parameter does not exist");
    let message = err.to_string();
    assert!(
        message.contains("/xomcloud/soundcloud/CLIENT_SECRET"),
        "{message}"
    );
    assert!(message.contains("SOUNDCLOUD_CLIENT_SECRET"), "{message}");
    assert!(!message.contains("do-not-print-me"), "{message}");
}
