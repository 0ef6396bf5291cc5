//! moto (a local AWS mock, here for SSM Parameter Store, DynamoDB and SQS) as a child process on
//! a free port of 127.0.0.1; killed when dropped.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::bins::tools_bin;

pub const REGION: &str = "us-east-1";
pub const ACCESS_KEY: &str = "test";
pub const SECRET_KEY: &str = "test";

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// moto's server with one DynamoDB request at a time: moto reads, checks and writes an item in
/// separate steps, so concurrent conditional writes (or two `ADD`s) can all pass or lose one;
/// DynamoDB applies each atomically. Other services (SQS long polls) run alongside.
const SERIALIZED_SERVER: &str = r#"
import sys, threading
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication, MotoRequestHandler, create_backend_app)
app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()
def one_at_a_time(environ, start_response):
    if not environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
        return app(environ, start_response)
    with lock:
        return list(app(environ, start_response))
run_simple(sys.argv[1], int(sys.argv[2]), one_at_a_time, threaded=True,
           request_handler=MotoRequestHandler)
"#;

pub struct Moto {
    port: u16,
    child: Child,
    _logs_dir: tempfile::TempDir,
    log: PathBuf,
}

impl Moto {
    /// Starts `moto_server` from the tools dir and waits until it answers HTTP.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// A moto that handles one DynamoDB request at a time, for tests of concurrent conditional
    /// writes and counters.
    pub fn start_atomic() -> Self {
        Self::start_with(true)
    }

    fn start_with(serialized: bool) -> Self {
        let bin = if serialized {
            tools_bin("python")
        } else {
            tools_bin("moto_server")
        };
        let mut last_failure = String::new();
        // The port is picked free then released: another process may take it in between.
        for _ in 0..3 {
            let port = free_port();
            let logs_dir = tempfile::Builder::new()
                .prefix("xomcloud-moto-")
                .tempdir()
                .expect("temp dir for moto's log");
            let log = logs_dir.path().join("moto.log");
            let log_file = std::fs::File::create(&log).expect("moto log file");
            let mut command = Command::new(&bin);
            if serialized {
                command
                    .args(["-c", SERIALIZED_SERVER, "127.0.0.1", &port.to_string()])
                    .env("MOTO_PORT", port.to_string());
            } else {
                command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
            }
            let child = command
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("moto log file"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
            let mut moto = Self {
                port,
                child,
                _logs_dir: logs_dir,
                log,
            };
            match moto.wait_ready() {
                Ok(()) => return moto,
                Err(failure) => last_failure = failure,
            }
        }
        panic!("moto_server did not start: {last_failure}");
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("it exited ({status}):\n{}", self.logs()));
            }
            if answers_http(self.port) {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "no HTTP answer on port {} within {START_TIMEOUT:?}:\n{}",
                    self.port,
                    self.logs()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// What moto printed so far.
    pub fn logs(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The environment that points a process's AWS SDK (SSM) at this moto.
    pub fn ssm_env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT_URL_SSM", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", REGION.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// An SSM client talking to this moto with static test credentials.
    pub async fn ssm_client(&self) -> aws_sdk_ssm::Client {
        let config = aws_sdk_ssm::Config::builder()
            .behavior_version(aws_sdk_ssm::config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(aws_sdk_ssm::config::Region::new(REGION))
            .credentials_provider(aws_sdk_ssm::config::Credentials::new(
                ACCESS_KEY, SECRET_KEY, None, None, "test",
            ))
            .build();
        aws_sdk_ssm::Client::from_conf(config)
    }

    /// A DynamoDB client talking to this moto with static test credentials.
    pub async fn dynamodb_client(&self) -> aws_sdk_dynamodb::Client {
        let config = aws_sdk_dynamodb::Config::builder()
            .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(aws_sdk_dynamodb::config::Region::new(REGION))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                ACCESS_KEY, SECRET_KEY, None, None, "test",
            ))
            .build();
        aws_sdk_dynamodb::Client::from_conf(config)
    }

    /// An SQS client talking to this moto with static test credentials.
    pub async fn sqs_client(&self) -> aws_sdk_sqs::Client {
        let config = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .endpoint_url(self.endpoint())
            .region(aws_sdk_sqs::config::Region::new(REGION))
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                ACCESS_KEY, SECRET_KEY, None, None, "test",
            ))
            .build();
        aws_sdk_sqs::Client::from_conf(config)
    }

    /// PutParameter `name` = `value` as a SecureString (overwriting).
    pub async fn put_secure(&self, name: &str, value: &str) {
        self.ssm_client()
            .await
            .put_parameter()
            .name(name)
            .value(value)
            .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
            .overwrite(true)
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PutParameter {name} on moto: {}",
                    aws_sdk_ssm::error::DisplayErrorContext(&e)
                )
            });
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// Whether something answers `GET /` on the port with an HTTP status line.
fn answers_http(port: u16) -> bool {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut head = [0u8; 5];
    stream.read_exact(&mut head).is_ok() && &head == b"HTTP/"
}
