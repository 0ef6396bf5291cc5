//! Buckets as items of the jobs table, for the Lambda (many processes, one truth):
//!
//! | item   | pk               | sk     | attributes |
//! |--------|------------------|--------|------------|
//! | bucket | `caller#{hash}`  | `rate` | tat (ms), expires_at |
//!
//! `caller#` is a prefix no job id can produce (job items are `job#…`, claims `idem#…`). A
//! request reads the item, runs the bucket's arithmetic and writes the new state with a
//! conditional `UpdateItem` that holds only if nobody wrote in between; a loser reads again. The
//! item expires (TTL) a minute after its bucket is full again: from then on it means nothing.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::DisplayErrorContext;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use super::{unix_ms, Bucket, LimiterError, RateLimiter, Verdict};

const RATE_SK: &str = "rate";
/// Rounds of read-and-write; only concurrent requests of one caller collide, and a caller that
/// keeps colliding is flooding: it is refused, not let through.
const ATTEMPTS: u32 = 8;

#[derive(Clone, Debug)]
pub struct DynamoLimiter {
    client: Client,
    table: String,
    bucket: Bucket,
}

impl DynamoLimiter {
    pub fn new(client: Client, table: impl Into<String>, bucket: Bucket) -> Self {
        Self {
            client,
            table: table.into(),
            bucket,
        }
    }

    pub fn from_sdk(sdk: &aws_config::SdkConfig, table: impl Into<String>, bucket: Bucket) -> Self {
        Self::new(Client::new(sdk), table, bucket)
    }

    fn key(caller: &str) -> HashMap<String, AttributeValue> {
        HashMap::from([
            ("pk".to_owned(), AttributeValue::S(caller_pk(caller))),
            ("sk".to_owned(), AttributeValue::S(RATE_SK.to_owned())),
        ])
    }

    async fn state(&self, caller: &str) -> Result<Option<u64>, LimiterError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(Self::key(caller)))
            .consistent_read(true)
            .projection_expression("tat")
            .send()
            .await
            .map_err(|e| LimiterError(format!("GetItem (bucket): {}", DisplayErrorContext(&e))))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        item.get("tat")
            .and_then(|v| v.as_n().ok())
            .map(|n| n.parse::<u64>())
            .transpose()
            .map_err(|e| LimiterError(format!("a bucket's tat is not a number: {e}")))
    }
}

/// The partition key of a caller's counters (its bucket and its active jobs).
pub fn caller_pk(caller: &str) -> String {
    format!("caller#{caller}")
}

#[async_trait]
impl RateLimiter for DynamoLimiter {
    fn bucket(&self) -> Bucket {
        self.bucket
    }

    async fn acquire(&self, caller: &str) -> Result<Verdict, LimiterError> {
        let mut last = None;
        for _ in 0..ATTEMPTS {
            let old = self.state(caller).await?;
            let verdict = self.bucket.check(old, unix_ms());
            if !verdict.allowed {
                return Ok(verdict);
            }
            last = Some(verdict);
            let expires_at = verdict.tat.div_ceil(1000) + 60;
            let mut update = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(Self::key(caller)))
                .update_expression("SET tat = :new, expires_at = :exp")
                .expression_attribute_values(":new", AttributeValue::N(verdict.tat.to_string()))
                .expression_attribute_values(":exp", AttributeValue::N(expires_at.to_string()));
            update = match old {
                None => update.condition_expression("attribute_not_exists(tat)"),
                Some(old) => update
                    .condition_expression("tat = :old")
                    .expression_attribute_values(":old", AttributeValue::N(old.to_string())),
            };
            match update.send().await {
                Ok(_) => return Ok(verdict),
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
                {
                    // Another request of the caller wrote first: read again after a jittered
                    // pause, so colliding requests spread out instead of colliding again.
                    let pause = rand::random_range(1..=10u64);
                    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
                }
                Err(e) => {
                    return Err(LimiterError(format!(
                        "UpdateItem (bucket): {}",
                        DisplayErrorContext(&e)
                    )))
                }
            }
        }
        tracing::warn!(caller, "a bucket kept changing: refusing the request");
        Ok(match last {
            Some(v) => Verdict {
                allowed: false,
                remaining: 0,
                retry_after: 1,
                ..v
            },
            None => return Err(LimiterError("no attempt was made".into())),
        })
    }
}
