//! `JobStore` on DynamoDB, one table keyed `pk` (S) + `sk` (S):
//!
//! | item  | pk                  | sk             | attributes |
//! |-------|---------------------|----------------|------------|
//! | job   | `job#{id}`          | `job`          | id, owner, status, created_at, updated_at, expires_at, error?, zip_key?, total, settled?, counted? |
//! | track | `job#{id}`          | `track#{i:05}` | the `TrackRecord` fields, expires_at |
//! | claim | `idem#{sha256 hex}` | `idem`         | job_id, expires_at |
//! | slots | `caller#{hash}`     | `active`       | active (count), expires_at |
//! | lease | `lease#{cache key}` | `lease`        | holder, expires_at (the shared track cache) |
//!
//! A job whose caller is counted (`with_active_limit`) takes a slot with one conditional
//! `UpdateItem` (`active < limit`) before it is written, and gives it back (`active > 0`) after
//! the one transition that makes it final; its job item then carries `caller`. The slots item
//! lives as long as the caller's latest job; a count whose item is past that is void.
//! A job is split into one item per track because a 200-track job (2 KiB URLs) is larger than
//! DynamoDB's 400 KB item limit. Every item carries `expires_at`, the table's TTL attribute.
//! `settled` counts the tracks settled so far and `counted` (a number set) holds their indexes,
//! so a track is counted once however often its settling is repeated (`settle_track`).

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::error::{DisplayErrorContext, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, DeleteRequest, KeySchemaElement, KeyType,
    KeysAndAttributes, PutRequest, ReturnValue, ScalarAttributeType, TimeToLiveSpecification,
    WriteRequest,
};
use aws_sdk_dynamodb::Client;
use serde::{Deserialize, Serialize};

use super::{check_settles, check_transition, Created, JobStore, Settled, StoreError};
use crate::limiter::dynamodb::caller_pk;
use crate::model::{
    is_job_id, unix_now, Job, JobStatus, Outcome, TrackRecord, TrackSpec, TrackUpdate,
};

type Item = HashMap<String, AttributeValue>;

const JOB_SK: &str = "job";
const IDEM_SK: &str = "idem";
const SLOTS_SK: &str = "active";
const LEASE_SK: &str = "lease";
const TRACK_SK_PREFIX: &str = "track#";
/// The sort key's `{index:05}` keeps tracks in order up to this many.
const MAX_TRACKS: usize = 100_000;
/// BatchWriteItem's limit.
const BATCH_SIZE: usize = 25;
/// Rounds of resending UnprocessedItems (throttling) before giving up.
const BATCH_ATTEMPTS: u32 = 8;

#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
    page_size: Option<i32>,
    /// Queued or running jobs a caller may have at once; 0: no limit.
    active_limit: u32,
}

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
            page_size: None,
            active_limit: 0,
        }
    }

    /// Refuses a job whose caller already has `limit` queued or running jobs (0: no limit).
    pub fn with_active_limit(mut self, limit: u32) -> Self {
        self.active_limit = limit;
        self
    }

    /// A store on a client built from the shared SDK configuration (region, credentials,
    /// `AWS_ENDPOINT_URL_DYNAMODB`).
    pub fn from_sdk(sdk: &aws_config::SdkConfig, table: impl Into<String>) -> Self {
        Self::new(Client::new(sdk), table)
    }

    /// Caps the items per `Query` page of `get` (tests use it to cross page boundaries without
    /// a megabyte of data; DynamoDB's own 1 MB page limit applies either way).
    pub fn with_query_page_size(mut self, items: i32) -> Self {
        self.page_size = Some(items);
        self
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    /// Claims `key` for `job` with one conditional put.
    async fn claim(&self, job: &Job, key: &str) -> Result<Claim, StoreError> {
        let pk = idem_pk(&job.owner, key);
        let item = to_item(&IdemItem {
            pk: pk.clone(),
            sk: IDEM_SK.into(),
            job_id: job.id.clone(),
            expires_at: job.expires_at,
        })?;
        // A claim can be lost to TTL deletion between the failed put and the read: try again.
        for _ in 0..3 {
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item.clone()))
                // TTL deletes expired items lazily (within days): an expired claim is free.
                .condition_expression("attribute_not_exists(pk) OR expires_at < :now")
                .expression_attribute_values(":now", number(job.created_at))
                .send()
                .await;
            match put {
                Ok(_) => return Ok(Claim::Ours { pk }),
                Err(e) if !is_conditional_failure_put(&e) => {
                    return Err(sdk_error("PutItem (idempotency claim)", e))
                }
                Err(_) => {}
            }
            let held = self.read(&pk, IDEM_SK, "idempotency claim").await?;
            if let Some(item) = held {
                let held: IdemItem = from_item(item)?;
                if held.expires_at >= job.created_at {
                    return Ok(Claim::Held {
                        job_id: held.job_id,
                    });
                }
            }
        }
        Err(StoreError(format!(
            "the idempotency claim of {} kept changing",
            job.owner
        )))
    }

    /// Takes one of `caller`'s active-job slots for `job`; `Ok(false)` when all are taken.
    async fn take_slot(&self, caller: &str, job: &Job) -> Result<bool, StoreError> {
        let limit = number(self.active_limit);
        let expires = number(job.expires_at);
        for _ in 0..3 {
            let take = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key_of(&caller_pk(caller), SLOTS_SK)))
                .update_expression(
                    "SET active = if_not_exists(active, :zero) + :one, expires_at = :exp",
                )
                .condition_expression("attribute_not_exists(active) OR active < :limit")
                .expression_attribute_values(":zero", number(0u64))
                .expression_attribute_values(":one", number(1u64))
                .expression_attribute_values(":limit", limit.clone())
                .expression_attribute_values(":exp", expires.clone())
                .send()
                .await;
            match take {
                Ok(_) => return Ok(true),
                Err(e) if !is_conditional_failure_update(&e) => {
                    return Err(sdk_error("UpdateItem (take a slot)", e))
                }
                Err(_) => {}
            }
            // All taken, unless the count outlived every job it counted (a job that never
            // ended, e.g. its queue message was lost): then it starts again from this job.
            let held = self.read(&caller_pk(caller), SLOTS_SK, "slots").await?;
            let held_until = held
                .as_ref()
                .and_then(|item| item.get("expires_at"))
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse::<u64>().ok());
            let Some(held_until) = held_until.filter(|t| *t < job.created_at) else {
                return Ok(false);
            };
            let restart = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key_of(&caller_pk(caller), SLOTS_SK)))
                .update_expression("SET active = :one, expires_at = :exp")
                .condition_expression("expires_at = :held")
                .expression_attribute_values(":one", number(1u64))
                .expression_attribute_values(":exp", expires.clone())
                .expression_attribute_values(":held", number(held_until))
                .send()
                .await;
            match restart {
                Ok(_) => return Ok(true),
                Err(e) if !is_conditional_failure_update(&e) => {
                    return Err(sdk_error("UpdateItem (restart the slots)", e))
                }
                Err(_) => {}
            }
        }
        Err(StoreError(format!(
            "the slots of caller {caller} kept changing"
        )))
    }

    /// Gives one of `caller`'s slots back; never below zero (a restarted count has no debt).
    async fn free_slot(&self, caller: &str) {
        let free = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&caller_pk(caller), SLOTS_SK)))
            .update_expression("SET active = active - :one")
            .condition_expression("active > :zero")
            .expression_attribute_values(":zero", number(0u64))
            .expression_attribute_values(":one", number(1u64))
            .send()
            .await;
        match free {
            Ok(_) => {}
            Err(e) if is_conditional_failure_update(&e) => {}
            Err(e) => {
                tracing::error!(caller, error = %DisplayErrorContext(&e), "cannot free an active-job slot")
            }
        }
    }

    /// Drops our claim after a failed create, so a retry with the same key can succeed.
    async fn release(&self, pk: &str, job_id: &str) {
        let released = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_of(pk, IDEM_SK)))
            .condition_expression("job_id = :id")
            .expression_attribute_values(":id", AttributeValue::S(job_id.into()))
            .send()
            .await;
        if let Err(e) = released {
            tracing::warn!(job_id, error = %DisplayErrorContext(&e), "cannot release an idempotency claim");
        }
    }

    /// The tracks first, the job item last: a job is visible only once all of it is stored. The
    /// job item names `slot_of` when the job holds one of that caller's slots.
    async fn write_job(&self, job: &Job, slot_of: Option<&str>) -> Result<(), StoreError> {
        self.write_tracks(&job.id, &job.tracks, job.expires_at)
            .await?;

        let mut item = JobItem::from_job(job);
        item.caller = slot_of.map(str::to_owned);
        let item = to_item(&item)?;
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| {
                if is_conditional_failure_put(&e) {
                    StoreError(format!("job {} already exists", job.id))
                } else {
                    sdk_error("PutItem (job)", e)
                }
            })?;
        Ok(())
    }

    /// Puts the track items of `tracks` (indices from 0), 25 to a batch, the batches at once.
    async fn write_tracks(
        &self,
        id: &str,
        tracks: &[TrackRecord],
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let pk = job_pk(id);
        let mut requests = Vec::with_capacity(tracks.len());
        for (index, track) in tracks.iter().enumerate() {
            let item = to_item(&TrackItem {
                pk: pk.clone(),
                sk: track_sk(index),
                expires_at,
                record: track.clone(),
            })?;
            let put = PutRequest::builder()
                .set_item(Some(item))
                .build()
                .map_err(|e| StoreError(format!("PutRequest: {e}")))?;
            requests.push(WriteRequest::builder().put_request(put).build());
        }
        self.write_batches(requests).await
    }

    async fn write_batches(&self, mut requests: Vec<WriteRequest>) -> Result<(), StoreError> {
        let mut batches = Vec::new();
        while !requests.is_empty() {
            let rest = requests.split_off(requests.len().min(BATCH_SIZE));
            batches.push(self.write_batch(std::mem::replace(&mut requests, rest)));
        }
        futures::future::try_join_all(batches).await?;
        Ok(())
    }

    /// One BatchWriteItem, resending what DynamoDB leaves unprocessed with a growing pause.
    async fn write_batch(&self, mut requests: Vec<WriteRequest>) -> Result<(), StoreError> {
        let mut pause = Duration::from_millis(25);
        for attempt in 1..=BATCH_ATTEMPTS {
            let out = self
                .client
                .batch_write_item()
                .request_items(&self.table, requests)
                .send()
                .await
                .map_err(|e| sdk_error("BatchWriteItem", e))?;
            requests = out
                .unprocessed_items
                .and_then(|mut left| left.remove(&self.table))
                .unwrap_or_default();
            if requests.is_empty() {
                return Ok(());
            }
            if attempt < BATCH_ATTEMPTS {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
        }
        Err(StoreError(format!(
            "BatchWriteItem left {} items unprocessed",
            requests.len()
        )))
    }

    async fn touch(&self, id: &str, now: u64) -> Result<(), StoreError> {
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&job_pk(id), JOB_SK)))
            .update_expression("SET #u = :now")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#u", "updated_at")
            .expression_attribute_values(":now", number(now))
            .send()
            .await
            .map_err(|e| {
                if is_conditional_failure_update(&e) {
                    StoreError(format!("no job {id}"))
                } else {
                    sdk_error("UpdateItem (job time)", e)
                }
            })?;
        Ok(())
    }

    /// Writes a track's state (the track item only); with `unless_settled`, only over a track
    /// not settled yet. Whether it wrote.
    async fn write_track(
        &self,
        id: &str,
        index: usize,
        update: &TrackUpdate,
        unless_settled: bool,
    ) -> Result<bool, StoreError> {
        let mut set = vec![
            "#state = :state".to_owned(),
            "#attempts = :attempts".to_owned(),
        ];
        let mut remove = Vec::new();
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&job_pk(id), &track_sk(index))))
            .expression_attribute_names("#state", "state")
            .expression_attribute_names("#attempts", "attempts")
            .expression_attribute_values(":state", AttributeValue::S(update.state.as_str().into()))
            .expression_attribute_values(":attempts", number(update.attempts));
        let optional = [
            ("error", update.error.clone().map(AttributeValue::S)),
            ("size", update.size.map(number)),
            ("crc32", update.crc32.map(number)),
        ];
        for (name, value) in optional {
            request = request.expression_attribute_names(format!("#{name}"), name);
            match value {
                Some(value) => {
                    set.push(format!("#{name} = :{name}"));
                    request = request.expression_attribute_values(format!(":{name}"), value);
                }
                None => remove.push(format!("#{name}")),
            }
        }
        let mut expression = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            expression.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        // Without `attribute_exists` an unknown index would create a stray track item.
        let mut condition = "attribute_exists(pk)".to_owned();
        if unless_settled {
            condition.push_str(" AND NOT (#state IN (:done, :failed))");
            request = request
                .expression_attribute_values(":done", AttributeValue::S("done".into()))
                .expression_attribute_values(":failed", AttributeValue::S("failed".into()));
        }
        match request
            .update_expression(expression)
            .condition_expression(condition)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure_update(&e) => {
                // Settled already (nothing to write), or no such track.
                match self.track_item(id, index).await? {
                    Some(_) if unless_settled => Ok(false),
                    _ => Err(StoreError(format!("job {id} has no track {index}"))),
                }
            }
            Err(e) => Err(sdk_error("UpdateItem (track)", e)),
        }
    }

    async fn track_item(&self, id: &str, index: usize) -> Result<Option<TrackRecord>, StoreError> {
        self.read(&job_pk(id), &track_sk(index), "track")
            .await?
            .map(|item| from_item::<TrackItem>(item).map(|t| t.record))
            .transpose()
    }

    /// The job item's status, total and settled count (consistent).
    async fn counts(&self, id: &str) -> Result<Option<(JobStatus, usize, usize)>, StoreError> {
        let item = self.read(&job_pk(id), JOB_SK, "job").await?;
        item.map(|item| counts_of(id, &item)).transpose()
    }

    /// One item, read consistently; `what` names it in an error.
    async fn read(&self, pk: &str, sk: &str, what: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error(&format!("GetItem ({what})"), e))?;
        Ok(out.item)
    }
}

#[async_trait]
impl JobStore for DynamoStore {
    async fn create(
        &self,
        job: &Job,
        idempotency_key: Option<&str>,
    ) -> Result<Created, StoreError> {
        // The id is part of every key: only our own ids may shape them.
        if !is_job_id(&job.id) {
            return Err(StoreError(format!("{:?} is not a job id", job.id)));
        }
        if job.tracks.len() > MAX_TRACKS {
            return Err(StoreError(format!(
                "{} tracks is too many",
                job.tracks.len()
            )));
        }
        let claim = match idempotency_key {
            Some(key) => match self.claim(job, key).await? {
                Claim::Ours { pk } => Some(pk),
                Claim::Held { job_id } => return Ok(Created::Existing(job_id)),
            },
            None => None,
        };
        let slot = match (job.caller.as_deref(), self.active_limit) {
            (Some(caller), 1..) => match self.take_slot(caller, job).await {
                Ok(true) => Some(caller),
                taken => {
                    if let Some(pk) = &claim {
                        self.release(pk, &job.id).await;
                    }
                    return taken.map(|_| Created::TooManyActive);
                }
            },
            _ => None,
        };
        match self.write_job(job, slot).await {
            Ok(()) => Ok(Created::New),
            Err(e) => {
                // Track items already written expire with the TTL; the claim and the slot need
                // undoing.
                if let Some(pk) = claim {
                    self.release(&pk, &job.id).await;
                }
                if let Some(caller) = slot {
                    self.free_slot(caller).await;
                }
                Err(e)
            }
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let mut job: Option<JobItem> = None;
        let mut tracks: Vec<(usize, TrackRecord)> = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", AttributeValue::S(job_pk(id)))
                .consistent_read(true)
                .set_limit(self.page_size)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_error("Query (job)", e))?;
            for item in page.items.unwrap_or_default() {
                let sk = item.get("sk").and_then(|v| v.as_s().ok()).cloned();
                match sk.as_deref() {
                    Some(JOB_SK) => job = Some(from_item(item)?),
                    Some(sk) if sk.starts_with(TRACK_SK_PREFIX) => {
                        let index = sk[TRACK_SK_PREFIX.len()..]
                            .parse::<usize>()
                            .map_err(|_| StoreError(format!("bad track key {sk:?}")))?;
                        let track: TrackItem = from_item(item)?;
                        tracks.push((index, track.record));
                    }
                    other => {
                        return Err(StoreError(format!("unexpected item {other:?} in job {id}")))
                    }
                }
            }
            match page.last_evaluated_key {
                Some(key) if !key.is_empty() => start = Some(key),
                _ => break,
            }
        }
        let Some(job) = job else {
            return Ok(None);
        };
        // The query returns items in sort-key order; sorting again costs nothing and states it.
        tracks.sort_by_key(|(index, _)| *index);
        // Items past the total belong to a list being replaced (`replace_tracks`).
        tracks.retain(|(index, _)| *index < job.total);
        let complete = tracks.len() == job.total
            && tracks.iter().enumerate().all(|(i, (index, _))| i == *index);
        if !complete {
            // TTL deletes a job's items one by one: an expired job may be half gone.
            if job.expires_at < unix_now() {
                return Ok(None);
            }
            return Err(StoreError(format!(
                "job {id} has {} of its {} tracks",
                tracks.len(),
                job.total
            )));
        }
        Ok(Some(
            job.into_job(tracks.into_iter().map(|(_, t)| t).collect()),
        ))
    }

    async fn status(&self, id: &str) -> Result<Option<JobStatus>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&job_pk(id), JOB_SK)))
            .consistent_read(true)
            .projection_expression("#s")
            .expression_attribute_names("#s", "status")
            .send()
            .await
            .map_err(|e| sdk_error("GetItem (status)", e))?;
        let Some(item) = out.item else {
            return Ok(None);
        };
        let status = item
            .get("status")
            .and_then(|v| v.as_s().ok())
            .ok_or_else(|| StoreError(format!("job {id} has no status")))?;
        JobStatus::parse(status)
            .map(Some)
            .ok_or_else(|| StoreError(format!("job {id} has an unknown status {status:?}")))
    }

    async fn transition(
        &self,
        id: &str,
        from: &[JobStatus],
        to: JobStatus,
        outcome: &Outcome,
    ) -> Result<bool, StoreError> {
        check_transition(from, to)?;
        if from.is_empty() {
            return Ok(false);
        }
        let mut set = vec!["#s = :to", "#u = :now"];
        let mut update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&job_pk(id), JOB_SK)))
            .expression_attribute_names("#s", "status")
            .expression_attribute_names("#u", "updated_at")
            .expression_attribute_values(":to", AttributeValue::S(to.as_str().into()))
            .expression_attribute_values(":now", number(unix_now()));
        if let Some(error) = &outcome.error {
            set.push("#e = :error");
            update = update
                .expression_attribute_names("#e", "error")
                .expression_attribute_values(":error", AttributeValue::S(error.clone()));
        }
        if let Some(zip_key) = &outcome.zip_key {
            set.push("#z = :zip");
            update = update
                .expression_attribute_names("#z", "zip_key")
                .expression_attribute_values(":zip", AttributeValue::S(zip_key.clone()));
        }
        let mut sources = Vec::with_capacity(from.len());
        for (i, status) in from.iter().enumerate() {
            sources.push(format!(":f{i}"));
            update = update.expression_attribute_values(
                format!(":f{i}"),
                AttributeValue::S(status.as_str().into()),
            );
        }
        let result = update
            .update_expression(format!("SET {}", set.join(", ")))
            // A missing item has no status, so a vanished job fails the condition too.
            .condition_expression(format!("#s IN ({})", sources.join(", ")))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match result {
            Ok(out) => {
                // This write made the job final (no other can: nothing leaves a final state),
                // so its slot is given back exactly once.
                let caller = out
                    .attributes
                    .as_ref()
                    .and_then(|item| item.get("caller"))
                    .and_then(|v| v.as_s().ok());
                if let (true, Some(caller)) = (to.is_final(), caller) {
                    self.free_slot(caller).await;
                }
                Ok(true)
            }
            Err(e) if is_conditional_failure_update(&e) => Ok(false),
            Err(e) => Err(sdk_error("UpdateItem (transition)", e)),
        }
    }

    /// The new track items first, then the job item's `total` (conditional on `running`), then
    /// the items past the new total: `get` reads the tracks below the job's total, so a reader
    /// sees one whole list (the items of a list being replaced may already hold the new specs).
    async fn replace_tracks(&self, id: &str, specs: &[TrackSpec]) -> Result<bool, StoreError> {
        if specs.len() > MAX_TRACKS {
            return Err(StoreError(format!("{} tracks is too many", specs.len())));
        }
        let Some(item) = self.read(&job_pk(id), JOB_SK, "job").await? else {
            return Ok(false);
        };
        let job: JobItem = from_item(item)?;
        if job.status != JobStatus::Running {
            return Ok(false);
        }
        let records: Vec<TrackRecord> = specs.iter().cloned().map(TrackRecord::queued).collect();
        self.write_tracks(id, &records, job.expires_at).await?;
        let updated = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&job_pk(id), JOB_SK)))
            .update_expression("SET #t = :total, #u = :now")
            .condition_expression("#s = :running")
            .expression_attribute_names("#t", "total")
            .expression_attribute_names("#u", "updated_at")
            .expression_attribute_names("#s", "status")
            .expression_attribute_values(":total", number(specs.len() as u64))
            .expression_attribute_values(":now", number(unix_now()))
            .expression_attribute_values(
                ":running",
                AttributeValue::S(JobStatus::Running.as_str().into()),
            )
            .send()
            .await;
        match updated {
            Ok(_) => {}
            Err(e) if is_conditional_failure_update(&e) => return Ok(false),
            Err(e) => return Err(sdk_error("UpdateItem (job total)", e)),
        }
        let mut stale = Vec::new();
        for index in specs.len()..job.total {
            let delete = DeleteRequest::builder()
                .set_key(Some(key_of(&job_pk(id), &track_sk(index))))
                .build()
                .map_err(|e| StoreError(format!("DeleteRequest: {e}")))?;
            stale.push(WriteRequest::builder().delete_request(delete).build());
        }
        self.write_batches(stale).await?;
        Ok(true)
    }

    async fn track(
        &self,
        id: &str,
        index: usize,
    ) -> Result<Option<(JobStatus, TrackRecord)>, StoreError> {
        // One BatchGetItem for the job item and the track item.
        let pk = job_pk(id);
        let keys = KeysAndAttributes::builder()
            .keys(key_of(&pk, JOB_SK))
            .keys(key_of(&pk, &track_sk(index)))
            .consistent_read(true)
            .build()
            .map_err(|e| StoreError(format!("BatchGetItem keys: {e}")))?;
        let out = self
            .client
            .batch_get_item()
            .request_items(&self.table, keys)
            .send()
            .await
            .map_err(|e| sdk_error("BatchGetItem (track)", e))?;
        if out.unprocessed_keys().is_some_and(|k| !k.is_empty()) {
            // Throttled: the two reads one by one.
            let (status, track) = tokio::try_join!(self.status(id), self.track_item(id, index))?;
            return Ok(status.zip(track));
        }
        let (mut status, mut track) = (None, None);
        for item in out
            .responses
            .and_then(|mut r| r.remove(&self.table))
            .unwrap_or_default()
        {
            match item
                .get("sk")
                .and_then(|v| v.as_s().ok())
                .map(String::as_str)
            {
                Some(JOB_SK) => status = Some(counts_of(id, &item)?.0),
                Some(_) => track = Some(from_item::<TrackItem>(item)?.record),
                None => return Err(StoreError(format!("job {id}: an item without sk"))),
            }
        }
        Ok(status.zip(track))
    }

    async fn update_track(
        &self,
        id: &str,
        index: usize,
        update: &TrackUpdate,
    ) -> Result<(), StoreError> {
        if !update.state.is_settled() {
            self.write_track(id, index, update, true).await?;
            return Ok(());
        }
        // Two items, two writes at once: a transaction would make parallel track updates
        // conflict on the job item.
        let track = self.write_track(id, index, update, false);
        tokio::try_join!(track, self.touch(id, unix_now()))?;
        Ok(())
    }

    /// The track item first (only over an unsettled track), then the job item's counter: `ADD
    /// settled 1` and the index to the `counted` set, on condition that the set lacks it (it
    /// also sets `updated_at`). A worker that dies between the two leaves the track settled and
    /// uncounted; the message's next delivery counts it.
    async fn settle_track(
        &self,
        id: &str,
        index: usize,
        update: &TrackUpdate,
    ) -> Result<Settled, StoreError> {
        check_settles(update)?;
        self.write_track(id, index, update, true).await?;
        let counted = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&job_pk(id), JOB_SK)))
            .update_expression("ADD #n :one, #c :index_set SET #u = :now")
            .condition_expression(
                "attribute_exists(pk) AND #t > :index AND NOT contains(#c, :index)",
            )
            .expression_attribute_names("#n", "settled")
            .expression_attribute_names("#c", "counted")
            .expression_attribute_names("#t", "total")
            .expression_attribute_names("#u", "updated_at")
            .expression_attribute_values(":one", number(1u64))
            .expression_attribute_values(":index", number(index as u64))
            .expression_attribute_values(":index_set", AttributeValue::Ns(vec![index.to_string()]))
            .expression_attribute_values(":now", number(unix_now()))
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        let (counted, (status, total, settled)) = match counted {
            Ok(out) => {
                let item = out.attributes.unwrap_or_default();
                (true, counts_of(id, &item)?)
            }
            Err(e) if is_conditional_failure_update(&e) => {
                let counts = self
                    .counts(id)
                    .await?
                    .ok_or_else(|| StoreError(format!("no job {id}")))?;
                (false, counts)
            }
            Err(e) => return Err(sdk_error("UpdateItem (settled count)", e)),
        };
        Ok(Settled {
            counted,
            settled,
            total,
            status,
        })
    }

    async fn take_lease(&self, key: &str, holder: &str, until: u64) -> Result<bool, StoreError> {
        let item: Item = [
            ("pk", AttributeValue::S(lease_pk(key))),
            ("sk", AttributeValue::S(LEASE_SK.into())),
            ("holder", AttributeValue::S(holder.into())),
            ("expires_at", number(until)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            // TTL deletes expired items lazily: an expired lease is free.
            .condition_expression(
                "attribute_not_exists(pk) OR expires_at <= :now OR holder = :holder",
            )
            .expression_attribute_values(":now", number(unix_now()))
            .expression_attribute_values(":holder", AttributeValue::S(holder.into()))
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) if is_conditional_failure_put(&e) => Ok(false),
            Err(e) => Err(sdk_error("PutItem (lease)", e)),
        }
    }

    async fn release_lease(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_of(&lease_pk(key), LEASE_SK)))
            .condition_expression("holder = :holder")
            .expression_attribute_values(":holder", AttributeValue::S(holder.into()))
            .send()
            .await;
        match deleted {
            Ok(_) => Ok(()),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(sdk_error("DeleteItem (lease)", e)),
        }
    }
}

/// Creates the jobs table (PAY_PER_REQUEST, `pk`/`sk`, TTL on `expires_at`) and waits until it
/// is active. For tests and local setups: production tables come from the infrastructure code.
pub async fn create_table(client: &Client, table: &str) -> Result<(), StoreError> {
    use aws_sdk_dynamodb::client::Waiters;

    let key = |name: &str, kind: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(name)
            .key_type(kind)
            .build()
            .map_err(|e| StoreError(format!("KeySchemaElement: {e}")))
    };
    let string = |name: &str| {
        AttributeDefinition::builder()
            .attribute_name(name)
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| StoreError(format!("AttributeDefinition: {e}")))
    };
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .key_schema(key("pk", KeyType::Hash)?)
        .key_schema(key("sk", KeyType::Range)?)
        .attribute_definitions(string("pk")?)
        .attribute_definitions(string("sk")?)
        .send()
        .await
        .map_err(|e| sdk_error("CreateTable", e))?;
    client
        .wait_until_table_exists()
        .table_name(table)
        .wait(Duration::from_secs(60))
        .await
        .map_err(|e| StoreError(format!("table {table} did not become active: {e}")))?;
    let ttl = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name("expires_at")
        .build()
        .map_err(|e| StoreError(format!("TimeToLiveSpecification: {e}")))?;
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(ttl)
        .send()
        .await
        .map_err(|e| sdk_error("UpdateTimeToLive", e))?;
    Ok(())
}

enum Claim {
    /// The key is ours now, under this partition key.
    Ours { pk: String },
    /// Another job holds it.
    Held { job_id: String },
}

#[derive(Serialize, Deserialize)]
struct JobItem {
    pk: String,
    sk: String,
    id: String,
    owner: String,
    status: JobStatus,
    created_at: u64,
    updated_at: u64,
    expires_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zip_key: Option<String>,
    /// The caller whose active-job slot the job holds until it is final.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    caller: Option<String>,
    /// How many track items belong to the job (a read can tell a whole job from a partial one).
    total: usize,
}

impl JobItem {
    fn from_job(job: &Job) -> Self {
        Self {
            pk: job_pk(&job.id),
            sk: JOB_SK.into(),
            id: job.id.clone(),
            owner: job.owner.clone(),
            status: job.status,
            created_at: job.created_at,
            updated_at: job.updated_at,
            expires_at: job.expires_at,
            error: job.error.clone(),
            zip_key: job.zip_key.clone(),
            caller: job.caller.clone(),
            total: job.tracks.len(),
        }
    }

    fn into_job(self, tracks: Vec<TrackRecord>) -> Job {
        Job {
            id: self.id,
            owner: self.owner,
            status: self.status,
            created_at: self.created_at,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
            error: self.error,
            zip_key: self.zip_key,
            caller: self.caller,
            tracks,
        }
    }
}

#[derive(Serialize, Deserialize)]
struct TrackItem {
    pk: String,
    sk: String,
    expires_at: u64,
    #[serde(flatten)]
    record: TrackRecord,
}

#[derive(Serialize, Deserialize)]
struct IdemItem {
    pk: String,
    sk: String,
    job_id: String,
    expires_at: u64,
}

/// A job item's status, total and settled count.
fn counts_of(id: &str, item: &Item) -> Result<(JobStatus, usize, usize), StoreError> {
    let bad = || StoreError(format!("job {id}: a job item without status/total"));
    let status = item
        .get("status")
        .and_then(|v| v.as_s().ok())
        .and_then(|s| JobStatus::parse(s))
        .ok_or_else(bad)?;
    let count = |name: &str| -> Result<usize, StoreError> {
        match item.get(name) {
            None => Ok(0),
            Some(v) => v.as_n().ok().and_then(|n| n.parse().ok()).ok_or_else(bad),
        }
    };
    let total = item.get("total").ok_or_else(bad).and(count("total"))?;
    Ok((status, total, count("settled")?))
}

fn job_pk(id: &str) -> String {
    format!("job#{id}")
}

/// Cache keys are `[0-9a-z]`: no job id (`job#`), claim or caller key can be this.
fn lease_pk(key: &str) -> String {
    format!("lease#{key}")
}

fn track_sk(index: usize) -> String {
    format!("{TRACK_SK_PREFIX}{index:05}")
}

/// The key is the client's; hashing bounds its length and keeps its text out of the table.
fn idem_pk(owner: &str, key: &str) -> String {
    let digest = aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        format!("{owner}\n{key}").as_bytes(),
    );
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("idem#{hex}")
}

fn key_of(pk: &str, sk: &str) -> Item {
    HashMap::from([
        ("pk".to_owned(), AttributeValue::S(pk.to_owned())),
        ("sk".to_owned(), AttributeValue::S(sk.to_owned())),
    ])
}

fn number(n: impl Into<u64>) -> AttributeValue {
    AttributeValue::N(n.into().to_string())
}

fn to_item<T: Serialize>(value: &T) -> Result<Item, StoreError> {
    serde_dynamo::to_item(value).map_err(|e| StoreError(format!("cannot encode an item: {e}")))
}

fn from_item<T: for<'de> Deserialize<'de>>(item: Item) -> Result<T, StoreError> {
    serde_dynamo::from_item(item).map_err(|e| StoreError(format!("cannot decode an item: {e}")))
}

fn is_conditional_failure_put<R>(
    e: &SdkError<aws_sdk_dynamodb::operation::put_item::PutItemError, R>,
) -> bool {
    e.as_service_error()
        .is_some_and(|e| e.is_conditional_check_failed_exception())
}

fn is_conditional_failure_update<R>(
    e: &SdkError<aws_sdk_dynamodb::operation::update_item::UpdateItemError, R>,
) -> bool {
    e.as_service_error()
        .is_some_and(|e| e.is_conditional_check_failed_exception())
}

fn sdk_error<E, R>(what: &str, e: SdkError<E, R>) -> StoreError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError(format!("{what}: {}", DisplayErrorContext(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{TrackSpec, TrackState};

    #[test]
    fn keys_have_the_documented_shape() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(job_pk(id), format!("job#{id}"));
        assert_eq!(track_sk(7), "track#00007");
        assert_eq!(track_sk(199), "track#00199");
        // Sort keys order like the indices, and the job item sorts before its tracks.
        assert!(track_sk(9) < track_sk(10) && JOB_SK < track_sk(0).as_str());
    }

    #[test]
    fn idempotency_keys_are_per_owner_and_bounded() {
        let a = idem_pk("alice", "k");
        assert_eq!(a.len(), "idem#".len() + 64);
        assert_eq!(a, idem_pk("alice", "k"));
        assert_ne!(a, idem_pk("bob", "k"));
        // The separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(idem_pk("ab", "c"), idem_pk("a", "bc"));
        assert_eq!(idem_pk("alice", &"x".repeat(10_000)).len(), a.len());
    }

    #[test]
    fn a_track_item_round_trips_through_attribute_values() {
        let record = TrackRecord {
            spec: TrackSpec {
                id: "42".into(),
                url: "https://soundcloud.com/a/b".into(),
                title: "Ti\"tle".into(),
                artist: "Ar".into(),
                cache_key: None,
            },
            state: TrackState::Done,
            error: None,
            size: Some(u64::MAX),
            crc32: Some(0xdead_beef),
            attempts: 2,
        };
        let item = to_item(&TrackItem {
            pk: job_pk("x"),
            sk: track_sk(3),
            expires_at: 99,
            record: record.clone(),
        })
        .unwrap();
        assert_eq!(item.get("state"), Some(&AttributeValue::S("done".into())));
        assert_eq!(
            item.get("crc32"),
            Some(&AttributeValue::N("3735928559".into()))
        );
        assert!(
            !item.contains_key("error"),
            "None is left out, not stored as NULL"
        );
        let back: TrackItem = from_item(item).unwrap();
        assert_eq!(back.record, record);
        assert_eq!(back.expires_at, 99);
    }
}
