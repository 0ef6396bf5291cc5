//! A Lambda Runtime API in-process (the interface a Lambda binary polls for events), so the
//! end-to-end tests run the compiled functions as real processes, the way Lambda does:
//!
//! ```ignore
//! let runtime = RuntimeApi::start().await;
//! let function = spawn_function(&workspace_bin("xomcloud-authorizer"), &runtime, &[]);
//! let outcome = runtime.invoke(event).await;
//! ```
//!
//! Implemented: `GET /2018-06-01/runtime/invocation/next` (long-poll),
//! `POST /2018-06-01/runtime/invocation/{id}/response`, `POST …/invocation/{id}/error` and
//! `POST /2018-06-01/runtime/init/error`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Notify};

/// How long [`RuntimeApi::invoke`] waits for the function's answer.
pub const DEFAULT_INVOKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The ARN the runtime announces as the invoked function.
pub const FUNCTION_ARN: &str = "arn:aws:lambda:us-east-1:123456789012:function:xomcloud-e2e";

const PREFIX: &str = "/2018-06-01/runtime";

/// How an invocation ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `POST …/invocation/{id}/response`; the body as JSON (a JSON string when it is not JSON).
    Response(Value),
    /// `POST …/invocation/{id}/error`.
    Error {
        error_type: String,
        error_message: String,
    },
}

impl Outcome {
    /// The response; panics (showing the error) when the invocation failed.
    #[track_caller]
    pub fn response(self) -> Value {
        match self {
            Self::Response(value) => value,
            Self::Error {
                error_type,
                error_message,
            } => panic!(
                "expected a response, the invocation failed: errorType={error_type:?} \
                 errorMessage={error_message:?}"
            ),
        }
    }

    /// The error message; panics (showing the response) when the invocation succeeded.
    #[track_caller]
    pub fn error_message(&self) -> &str {
        match self {
            Self::Error { error_message, .. } => error_message,
            Self::Response(value) => {
                panic!("expected the invocation to fail, it answered: {value}")
            }
        }
    }

    /// The error type; panics (showing the response) when the invocation succeeded.
    #[track_caller]
    pub fn error_type(&self) -> &str {
        match self {
            Self::Error { error_type, .. } => error_type,
            Self::Response(value) => {
                panic!("expected the invocation to fail, it answered: {value}")
            }
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Self::Error { .. })
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Response(value) => write!(f, "response {value}"),
            Self::Error {
                error_type,
                error_message,
            } => write!(f, "error {error_type}: {error_message}"),
        }
    }
}

/// An `init/error` the function reported.
#[derive(Debug, Clone, PartialEq)]
pub struct InitError {
    pub error_type: String,
    pub error_message: String,
}

struct Queued {
    request_id: String,
    body: Bytes,
    /// The function's time for this invocation (`Lambda-Runtime-Deadline-Ms` = now + this).
    time_limit: Duration,
}

/// The headers of an API Gateway proxy answer as one object, names lower-cased (REST answers
/// carry `multiValueHeaders`, HTTP API ones `headers`; the first value of each).
pub fn proxy_headers(response: &Value) -> Value {
    let mut headers = serde_json::Map::new();
    for field in ["multiValueHeaders", "headers"] {
        if let Some(map) = response[field].as_object() {
            for (k, v) in map {
                let v = if v.is_array() {
                    v[0].clone()
                } else {
                    v.clone()
                };
                headers.insert(k.to_lowercase(), v);
            }
        }
    }
    Value::Object(headers)
}

/// The time a function gets per invocation unless the test says otherwise.
pub const DEFAULT_TIME_LIMIT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    queue: Mutex<VecDeque<Queued>>,
    queued: Notify,
    in_flight: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    init_errors: Mutex<Vec<InitError>>,
    init_failed: Notify,
    polls: AtomicUsize,
    next_id: AtomicU64,
    processes: Mutex<Vec<Weak<ProcessInner>>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// The Runtime API server, listening on 127.0.0.1 (a random port) until dropped.
pub struct RuntimeApi {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    /// Runs as a task on the current tokio runtime.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the Runtime API");
        let addr = listener.local_addr().expect("Runtime API address");
        let state = Arc::new(State::default());
        let server_state = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let state = server_state.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| route(state.clone(), req));
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    /// `host:port`, the value of `AWS_LAMBDA_RUNTIME_API`.
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// Queues `event` for the function and waits (up to [`DEFAULT_INVOKE_TIMEOUT`]) for its
    /// answer. Panics on timeout, on an `init/error`, or when every process spawned on this
    /// runtime has exited.
    pub async fn invoke(&self, event: Value) -> Outcome {
        self.invoke_with_timeout(event, DEFAULT_INVOKE_TIMEOUT)
            .await
    }

    pub async fn invoke_with_timeout(&self, event: Value, timeout: Duration) -> Outcome {
        self.invoke_with_time_limit(event, timeout, DEFAULT_TIME_LIMIT)
            .await
    }

    /// Invokes with the function's deadline `time_limit` from the moment it takes the event.
    pub async fn invoke_with_time_limit(
        &self,
        event: Value,
        timeout: Duration,
        time_limit: Duration,
    ) -> Outcome {
        let n = self.state.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let request_id = format!("00000000-0000-4000-8000-{n:012x}");
        let (tx, rx) = oneshot::channel();
        lock(&self.state.in_flight).insert(request_id.clone(), tx);
        let body = Bytes::from(serde_json::to_vec(&event).expect("serialize the event"));
        lock(&self.state.queue).push_back(Queued {
            request_id: request_id.clone(),
            body,
            time_limit,
        });
        self.state.queued.notify_one();

        let deadline = Instant::now() + timeout;
        let mut rx = rx;
        loop {
            let init_failed = self.state.init_failed.notified();
            if let Some(error) = lock(&self.state.init_errors).first().cloned() {
                self.forget(&request_id);
                panic!(
                    "the function reported an init error ({}: {}) instead of answering \
                     invocation {request_id}{}",
                    error.error_type,
                    error.error_message,
                    self.process_report()
                );
            }
            if self.all_processes_exited() {
                // It may have answered just before exiting.
                if let Ok(outcome) = rx.try_recv() {
                    return outcome;
                }
                self.forget(&request_id);
                panic!(
                    "every function process exited before answering invocation \
                     {request_id}{}",
                    self.process_report()
                );
            }
            if Instant::now() >= deadline {
                self.forget(&request_id);
                panic!(
                    "no answer to invocation {request_id} within {timeout:?} (the function \
                     polled for events {} times){}",
                    self.state.polls.load(Ordering::Relaxed),
                    self.process_report()
                );
            }
            tokio::select! {
                outcome = &mut rx => {
                    return outcome.expect("the Runtime API dropped the invocation");
                }
                _ = init_failed => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// The `init/error` reports received so far.
    pub fn init_errors(&self) -> Vec<InitError> {
        lock(&self.state.init_errors).clone()
    }

    /// How many times a function asked for the next event.
    pub fn polls(&self) -> usize {
        self.state.polls.load(Ordering::Relaxed)
    }

    fn forget(&self, request_id: &str) {
        lock(&self.state.in_flight).remove(request_id);
        lock(&self.state.queue).retain(|q| q.request_id != request_id);
    }

    fn attach(&self, process: &Arc<ProcessInner>) {
        let mut processes = lock(&self.state.processes);
        processes.retain(|p| p.strong_count() > 0);
        processes.push(Arc::downgrade(process));
    }

    fn live_processes(&self) -> Vec<Arc<ProcessInner>> {
        lock(&self.state.processes)
            .iter()
            .filter_map(Weak::upgrade)
            .collect()
    }

    fn all_processes_exited(&self) -> bool {
        let processes = self.live_processes();
        !processes.is_empty() && processes.iter().all(|p| p.exit_status().is_some())
    }

    fn process_report(&self) -> String {
        let mut report = String::new();
        for p in self.live_processes() {
            let status = match p.exit_status() {
                Some(status) => format!("exited ({status})"),
                None => "running".to_owned(),
            };
            report.push_str(&format!(
                "\n--- {} [{status}] output:\n{}",
                p.bin.display(),
                p.logs()
            ));
        }
        report
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type HttpResponse = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: Value) -> HttpResponse {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

fn accepted() -> HttpResponse {
    reply(StatusCode::ACCEPTED, json!({"status": "OK"}))
}

async fn route(state: Arc<State>, req: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let Some(rest) = path.strip_prefix(PREFIX) else {
        return Ok(not_found(&path));
    };
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    let response = match (&method, segments.as_slice()) {
        (&Method::GET, ["invocation", "next"]) => next_invocation(&state).await,
        (&Method::POST, ["invocation", id, "response"]) => {
            let id = (*id).to_owned();
            let body = read_body(req).await;
            let value = serde_json::from_slice(&body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into_owned()));
            complete(&state, &id, Outcome::Response(value))
        }
        (&Method::POST, ["invocation", id, "error"]) => {
            let id = (*id).to_owned();
            let header_type = error_type_header(&req);
            let body = read_body(req).await;
            let (error_type, error_message) = parse_error(&body, header_type);
            complete(
                &state,
                &id,
                Outcome::Error {
                    error_type,
                    error_message,
                },
            )
        }
        (&Method::POST, ["init", "error"]) => {
            let header_type = error_type_header(&req);
            let body = read_body(req).await;
            let (error_type, error_message) = parse_error(&body, header_type);
            lock(&state.init_errors).push(InitError {
                error_type,
                error_message,
            });
            state.init_failed.notify_waiters();
            accepted()
        }
        _ => not_found(&path),
    };
    Ok(response)
}

fn not_found(path: &str) -> HttpResponse {
    reply(
        StatusCode::NOT_FOUND,
        json!({"errorType": "NotFound", "errorMessage": format!("no route {path}")}),
    )
}

fn error_type_header(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get("lambda-runtime-function-error-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

async fn read_body(req: Request<Incoming>) -> Bytes {
    match req.into_body().collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    }
}

/// `{"errorType": …, "errorMessage": …}`, or the raw body as the message.
fn parse_error(body: &[u8], header_type: Option<String>) -> (String, String) {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let error_type = field("errorType").or(header_type).unwrap_or_default();
    let error_message =
        field("errorMessage").unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    (error_type, error_message)
}

fn complete(state: &State, request_id: &str, outcome: Outcome) -> HttpResponse {
    match lock(&state.in_flight).remove(request_id) {
        Some(tx) => {
            let _ = tx.send(outcome);
            accepted()
        }
        None => reply(
            StatusCode::BAD_REQUEST,
            json!({
                "errorType": "InvalidRequestID",
                "errorMessage": format!("no invocation {request_id} in flight"),
            }),
        ),
    }
}

async fn next_invocation(state: &State) -> HttpResponse {
    state.polls.fetch_add(1, Ordering::Relaxed);
    let queued = loop {
        let notified = state.queued.notified();
        if let Some(queued) = lock(&state.queue).pop_front() {
            break queued;
        }
        notified.await;
    };
    let deadline_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis()
        + queued.time_limit.as_millis();
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .header("Lambda-Runtime-Aws-Request-Id", &queued.request_id)
        .header("Lambda-Runtime-Deadline-Ms", deadline_ms.to_string())
        .header("Lambda-Runtime-Invoked-Function-Arn", FUNCTION_ARN)
        .header(
            "Lambda-Runtime-Trace-Id",
            "Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=0",
        )
        .body(Full::new(queued.body))
        .expect("next-invocation response")
}

struct ProcessInner {
    bin: PathBuf,
    child: Mutex<Child>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl ProcessInner {
    fn exit_status(&self) -> Option<ExitStatus> {
        lock(&self.child).try_wait().ok().flatten()
    }

    fn stdout(&self) -> String {
        std::fs::read(&self.stdout)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read(&self.stderr)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn logs(&self) -> String {
        let mut logs = self.stdout();
        let stderr = self.stderr();
        if !stderr.is_empty() {
            if !logs.is_empty() && !logs.ends_with('\n') {
                logs.push('\n');
            }
            logs.push_str(&stderr);
        }
        logs
    }
}

/// A Lambda function process attached to a [`RuntimeApi`]; killed when dropped.
pub struct LambdaProcess {
    inner: Arc<ProcessInner>,
    _logs_dir: tempfile::TempDir,
}

/// Starts `bin` the way Lambda does: a cleared environment with the Lambda variables pointing
/// at `runtime` (plus `PATH`, `HOME`, `TMPDIR` passed through), then `envs` (which may override
/// any of them). Stdout and stderr go to files, read with [`LambdaProcess::logs`].
pub fn spawn_function(bin: &Path, runtime: &RuntimeApi, envs: &[(&str, &str)]) -> LambdaProcess {
    spawn_function_with_args(bin, &[], runtime, envs)
}

/// [`spawn_function`] with command-line arguments (an image's CMD reaches the bootstrap as
/// arguments, as well as `_HANDLER`).
pub fn spawn_function_with_args(
    bin: &Path,
    args: &[&str],
    runtime: &RuntimeApi,
    envs: &[(&str, &str)],
) -> LambdaProcess {
    let name = bin
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("function")
        .to_owned();
    let logs_dir = tempfile::Builder::new()
        .prefix("xomcloud-lambda-logs-")
        .tempdir()
        .expect("temp dir for the function's logs");
    let stdout = logs_dir.path().join("stdout.log");
    let stderr = logs_dir.path().join("stderr.log");
    let mut cmd = Command::new(bin);
    cmd.args(args).env_clear();
    for var in ["PATH", "HOME", "TMPDIR"] {
        if let Some(value) = std::env::var_os(var) {
            cmd.env(var, value);
        }
    }
    cmd.env("AWS_LAMBDA_RUNTIME_API", runtime.addr())
        .env("AWS_LAMBDA_FUNCTION_NAME", &name)
        .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
        .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
        .env(
            "AWS_LAMBDA_LOG_STREAM_NAME",
            "2024/01/01/[$LATEST]00000000000000000000000000000000",
        )
        .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
        .env("AWS_REGION", "us-east-1");
    for (key, value) in envs {
        cmd.env(key, value);
    }
    cmd.stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).expect("stdout log file"))
        .stderr(std::fs::File::create(&stderr).expect("stderr log file"));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let inner = Arc::new(ProcessInner {
        bin: bin.to_owned(),
        child: Mutex::new(child),
        stdout,
        stderr,
    });
    runtime.attach(&inner);
    LambdaProcess {
        inner,
        _logs_dir: logs_dir,
    }
}

impl LambdaProcess {
    /// Everything the process wrote so far: stdout, then stderr.
    pub fn logs(&self) -> String {
        self.inner.logs()
    }

    pub fn stdout(&self) -> String {
        self.inner.stdout()
    }

    pub fn stderr(&self) -> String {
        self.inner.stderr()
    }

    /// `Some` once the process has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.inner.exit_status()
    }

    pub fn id(&self) -> u32 {
        lock(&self.inner.child).id()
    }
}

impl Drop for LambdaProcess {
    fn drop(&mut self) {
        let mut child = lock(&self.inner.child);
        let _ = child.kill();
        let _ = child.wait();
    }
}
