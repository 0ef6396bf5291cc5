//! The Lambda path of download jobs as a test rig: moto (DynamoDB one request at a time, SQS),
//! s3s-fs as S3, the jobs queue, the track queue and their dead-letter queue, the HTTP function
//! (`xomcloud-download-tracks`) and the jobs worker (the same binary, `_HANDLER=jobs-worker`)
//! under Runtime API servers, the scdl stub. The harness plays the queues' event source
//! mappings: it receives from the moto queue, hands a worker a real SQS event, and deletes the
//! message on success. Used by `tests/jobs_lambda_e2e.rs` and `benches/fanout.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::bins::workspace_bin;
use super::moto::Moto;
use super::runtime_api::{
    proxy_headers, spawn_function, spawn_function_with_args, LambdaProcess, RuntimeApi,
};
use super::s3::S3Server;

/// The functions' binary: the HTTP function, and the jobs worker with `jobs-worker`.
pub const BIN: &str = "xomcloud-download-tracks";

pub const TABLE: &str = "xomcloud-jobs";
pub const CLIENT_ID: &str = "jobs-e2e-client-id-7c1d";
pub const ALICE: &str = "alice";
pub const WORKER_TIME: Duration = Duration::from_secs(120);

pub struct Harness {
    pub moto: Moto,
    pub s3: S3Server,
    pub sqs: aws_sdk_sqs::Client,
    pub dynamodb: aws_sdk_dynamodb::Client,
    pub queue_url: String,
    pub queue_arn: String,
    pub track_queue_url: String,
    pub track_queue_arn: String,
    pub dlq_url: String,
    pub dlq_arn: String,
    pub http_runtime: RuntimeApi,
    pub _http: LambdaProcess,
    pub worker_runtime: RuntimeApi,
    pub worker: Option<LambdaProcess>,
    pub env: Vec<(String, String)>,
    pub tmp: tempfile::TempDir,
    pub stub_log: PathBuf,
    pub _work: tempfile::TempDir,
    /// The functions' binary every process of the harness runs.
    pub bin: PathBuf,
}

pub async fn queue(
    sqs: &aws_sdk_sqs::Client,
    name: &str,
    redrive: Option<&str>,
) -> (String, String) {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let mut create = sqs.create_queue().queue_name(name);
    if let Some(dlq_arn) = redrive {
        create = create.attributes(
            A::RedrivePolicy,
            json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "3"}).to_string(),
        );
    }
    let url = create.send().await.unwrap().queue_url.unwrap();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(A::QueueArn)
        .send()
        .await
        .unwrap();
    let arn = attrs.attributes.unwrap()[&A::QueueArn].clone();
    (url, arn)
}

impl Harness {
    /// The harness on the debug binaries `cargo build --workspace --bins` made (the test
    /// executable's profile directory), with the harness's environment plus `extra`.
    pub async fn start(extra: &[(&str, &str)]) -> Self {
        let bin = workspace_bin(BIN);
        Self::start_in(bin.parent().expect("the binaries' directory"), extra).await
    }

    /// [`Harness::start`] with the functions' binary taken from `bin_dir` (a bench passes
    /// `target/release`).
    pub async fn start_in(bin_dir: &Path, extra: &[(&str, &str)]) -> Self {
        let bin = bin_dir.join(format!("{BIN}{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.is_file(), "{} is missing", bin.display());
        // DynamoDB atomic: track workers settle tracks of one job at once.
        let moto = Moto::start_atomic();
        let s3 = S3Server::start().await;
        let dynamodb = moto.dynamodb_client().await;
        xomcloud_jobs::store::dynamodb::create_table(&dynamodb, TABLE)
            .await
            .unwrap();
        let sqs = moto.sqs_client().await;
        let (dlq_url, dlq_arn) = queue(&sqs, "xomcloud-jobs-dlq", None).await;
        let (queue_url, queue_arn) = queue(&sqs, "xomcloud-jobs", Some(&dlq_arn)).await;
        let (track_queue_url, track_queue_arn) =
            queue(&sqs, "xomcloud-tracks", Some(&dlq_arn)).await;
        let tmp = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let stub_log = work.path().join("scdl.log");
        let mut env = s3.env();
        env.extend(super::stub::stub_env());
        for (k, v) in [
            ("AWS_ENDPOINT_URL_DYNAMODB", moto.endpoint().as_str()),
            ("AWS_ENDPOINT_URL_SQS", moto.endpoint().as_str()),
            ("AWS_ENDPOINT_URL_SSM", "http://127.0.0.1:9"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("JOBS_TABLE", TABLE),
            ("JOBS_QUEUE_URL", queue_url.as_str()),
            ("TRACK_QUEUE_URL", track_queue_url.as_str()),
            ("JOBS_DLQ_ARN", dlq_arn.as_str()),
            ("SOUNDCLOUD_CLIENT_ID", CLIENT_ID),
            ("SCDL_BIN", super::stub::stub_scdl().to_str().unwrap()),
            ("SCDL_STUB_LOG", stub_log.to_str().unwrap()),
            ("SCDL_STUB_SIZE", "100000"),
            ("SCDL_STUB_DELAY", "0.3"),
            ("TMPDIR", tmp.path().to_str().unwrap()),
            ("TRACK_TIMEOUT_SECONDS", "3"),
            ("TRACK_RETRY_PAUSE_SECONDS", "0"),
        ]
        .iter()
        .chain(extra)
        {
            env.push((k.to_string(), v.to_string()));
        }
        let http_runtime = RuntimeApi::start().await;
        let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let http = spawn_function(&bin, &http_runtime, &refs);
        let worker_runtime = RuntimeApi::start().await;
        let mut harness = Self {
            moto,
            s3,
            sqs,
            dynamodb,
            queue_url,
            queue_arn,
            track_queue_url,
            track_queue_arn,
            dlq_url,
            dlq_arn,
            http_runtime,
            _http: http,
            worker_runtime,
            worker: None,
            env,
            tmp,
            stub_log,
            _work: work,
            bin,
        };
        harness.start_worker(&[]);
        harness
    }

    /// (Re)starts the worker process with the harness's environment plus `extra`.
    pub fn start_worker(&mut self, extra: &[(&str, &str)]) {
        self.worker = None;
        let worker = self.spawn_worker_with(&self.worker_runtime, extra);
        self.worker = Some(worker);
    }

    /// The harness's environment as the function processes take it.
    fn env_refs(&self) -> Vec<(&str, &str)> {
        self.env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    /// A jobs-worker process on `runtime` with the harness's environment plus `extra`.
    fn spawn_worker_with(&self, runtime: &RuntimeApi, extra: &[(&str, &str)]) -> LambdaProcess {
        let mut refs = self.env_refs();
        refs.push(("_HANDLER", "jobs-worker"));
        refs.extend_from_slice(extra);
        spawn_function_with_args(&self.bin, &["jobs-worker"], runtime, &refs)
    }

    /// One more HTTP function process on the same Runtime API (Lambda's concurrency).
    pub fn spawn_http(&self) -> LambdaProcess {
        spawn_function(&self.bin, &self.http_runtime, &self.env_refs())
    }

    pub fn worker_logs(&self) -> String {
        self.worker.as_ref().map(|w| w.logs()).unwrap_or_default()
    }

    /// A REST v1 proxy event for `method path` on stage `prod`, from `principal`.
    pub fn event(method: &str, path: &str, body: Option<&Value>, principal: &str) -> Value {
        let text =
            include_str!("../fixtures/download/rest-v1.json").replace("__PRINCIPAL__", principal);
        let mut event: Value = serde_json::from_str(&text).unwrap();
        let resource = if path == "/jobs" {
            "/jobs"
        } else {
            "/jobs/{id}"
        };
        event["resource"] = json!(resource);
        event["path"] = json!(path);
        event["httpMethod"] = json!(method);
        event["requestContext"]["httpMethod"] = json!(method);
        event["requestContext"]["resourcePath"] = json!(resource);
        event["requestContext"]["path"] = json!(format!("/prod{path}"));
        event["body"] = body.map_or(Value::Null, |b| json!(b.to_string()));
        event
    }

    pub async fn call(&self, event: Value) -> (u16, Value, Value) {
        let answer = self.http_runtime.invoke(event).await.response();
        let status = answer["statusCode"].as_u64().unwrap() as u16;
        let body = answer["body"].as_str().unwrap_or("");
        let body = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(body).unwrap()
        };
        (status, body, proxy_headers(&answer))
    }

    pub async fn post(
        &self,
        body: &Value,
        principal: &str,
        key: Option<&str>,
    ) -> (u16, Value, Value) {
        let mut event = Self::event("POST", "/jobs", Some(body), principal);
        if let Some(key) = key {
            event["headers"]["Idempotency-Key"] = json!(key);
        }
        self.call(event).await
    }

    pub async fn get(&self, id: &str, principal: &str) -> (u16, Value) {
        let (status, body, _) = self
            .call(Self::event("GET", &format!("/jobs/{id}"), None, principal))
            .await;
        (status, body)
    }

    pub async fn delete(&self, id: &str, principal: &str) -> (u16, Value) {
        let (status, body, _) = self
            .call(Self::event(
                "DELETE",
                &format!("/jobs/{id}"),
                None,
                principal,
            ))
            .await;
        (status, body)
    }

    /// Creates a job for `tracks` and returns its id.
    pub async fn create(&self, tracks: &[Value]) -> String {
        let (status, body, _) = self.post(&json!({ "tracks": tracks }), ALICE, None).await;
        assert_eq!(status, 202, "{body}");
        body["data"]["job_id"].as_str().unwrap().to_owned()
    }

    pub async fn receive(&self, queue_url: &str) -> Option<aws_sdk_sqs::types::Message> {
        self.receive_up_to(queue_url, 1, 1).await.into_iter().next()
    }

    /// Up to `n` (≤ 10) messages, waiting up to `wait` seconds for the first.
    pub async fn receive_up_to(
        &self,
        queue_url: &str,
        n: usize,
        wait: i32,
    ) -> Vec<aws_sdk_sqs::types::Message> {
        let out = self
            .sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(n as i32)
            .wait_time_seconds(wait)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap();
        out.messages.unwrap_or_default()
    }

    /// The event source mapping's SQS event for one received message.
    pub fn sqs_event(&self, message: &aws_sdk_sqs::types::Message, source_arn: &str) -> Value {
        let mut event: Value =
            serde_json::from_str(include_str!("../fixtures/jobs/sqs-event.json")).unwrap();
        let record = &mut event["Records"][0];
        record["messageId"] = json!(message.message_id());
        record["receiptHandle"] = json!(message.receipt_handle());
        record["body"] = json!(message.body());
        record["md5OfBody"] = json!(message.md5_of_body());
        record["eventSourceARN"] = json!(source_arn);
        record["awsRegion"] = json!("us-east-1");
        record["messageAttributes"] = json!({});
        let count = message
            .attributes()
            .and_then(|a| {
                a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::ApproximateReceiveCount)
            })
            .cloned()
            .unwrap_or_else(|| "1".into());
        record["attributes"]["ApproximateReceiveCount"] = json!(count);
        event
    }

    /// Hands one message to the worker; deletes it when the worker reports no failure, makes it
    /// visible again at once otherwise. The worker's answer.
    pub async fn deliver(
        &self,
        message: &aws_sdk_sqs::types::Message,
        queue_url: &str,
        source_arn: &str,
        time_limit: Duration,
    ) -> Value {
        let event = self.sqs_event(message, source_arn);
        let answer = self
            .worker_runtime
            .invoke_with_time_limit(event, WORKER_TIME, time_limit)
            .await
            .response();
        self.settle(message, queue_url, &answer).await;
        answer
    }

    pub async fn settle(
        &self,
        message: &aws_sdk_sqs::types::Message,
        queue_url: &str,
        answer: &Value,
    ) {
        let failed = answer["batchItemFailures"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let handle = message.receipt_handle().unwrap();
        if failed {
            self.sqs
                .change_message_visibility()
                .queue_url(queue_url)
                .receipt_handle(handle)
                .visibility_timeout(0)
                .send()
                .await
                .unwrap();
        } else {
            self.sqs
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(handle)
                .send()
                .await
                .unwrap();
        }
    }

    /// Plays both event source mappings (the jobs queue's, the track queue's) one message at a
    /// time until both queues are empty; the number of deliveries.
    pub async fn drain(&self, time_limit: Duration) -> usize {
        self.drain_with(1, time_limit).await
    }

    /// Plays both event source mappings with up to `in_flight` messages delivered at once (the
    /// worker processes on the runtime take them in parallel), until both queues are empty;
    /// the number of deliveries.
    pub async fn drain_with(&self, in_flight: usize, time_limit: Duration) -> usize {
        let queues = [
            (&self.queue_url, &self.queue_arn),
            (&self.track_queue_url, &self.track_queue_arn),
        ];
        let mut delivered = 0;
        // Short polls while there is work; an empty round is confirmed with a long poll.
        let mut wait = 0;
        loop {
            let mut batch = Vec::new();
            for (url, arn) in queues {
                let room = in_flight.min(10) - batch.len();
                if room == 0 {
                    break;
                }
                for message in self.receive_up_to(url, room, wait).await {
                    batch.push((message, url, arn));
                }
            }
            if batch.is_empty() {
                if wait > 0 {
                    return delivered;
                }
                wait = 1;
                continue;
            }
            wait = 0;
            delivered += batch.len();
            assert!(delivered < 500, "the queues never empty");
            futures::future::join_all(
                batch
                    .iter()
                    .map(|(message, url, arn)| self.deliver(message, url, arn, time_limit)),
            )
            .await;
        }
    }

    /// `n` more worker processes on the worker runtime (Lambda's concurrency).
    pub fn spawn_workers(&self, n: usize) -> Vec<LambdaProcess> {
        (0..n)
            .map(|_| self.spawn_worker_with(&self.worker_runtime, &[]))
            .collect()
    }

    /// A worker process of its own on `runtime` (a runtime of the caller's: it handles only
    /// what the caller invokes there).
    pub fn spawn_worker_on(&self, runtime: &RuntimeApi) -> LambdaProcess {
        self.spawn_worker_with(runtime, &[])
    }

    /// The job's tracks' states, in order.
    pub async fn states(&self, id: &str) -> Vec<String> {
        let (_, body) = self.get(id, ALICE).await;
        body["data"]["tracks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["state"].as_str().unwrap().to_owned())
            .collect()
    }

    pub fn scdl_runs(&self) -> Vec<String> {
        super::stub::logged_urls(&self.stub_log)
    }

    pub fn stub_pgids(&self) -> Vec<i64> {
        super::stub::logged_pgids(&self.stub_log)
    }

    pub fn temp_is_empty(&self) -> bool {
        std::fs::read_dir(self.tmp.path()).unwrap().next().is_none()
    }

    pub fn job_objects(&self) -> Vec<String> {
        self.s3
            .objects()
            .into_iter()
            .filter(|k| k.starts_with("jobs/"))
            .collect()
    }

    pub async fn items(&self) -> i32 {
        self.dynamodb
            .scan()
            .table_name(TABLE)
            .send()
            .await
            .unwrap()
            .count
    }
}

pub fn track(i: usize, slug: &str) -> Value {
    json!({"id": format!("t{i}"), "url": format!("https://soundcloud.com/stub/{slug}-{i}"),
           "title": format!("Song {i}"), "artist": "Stub"})
}
