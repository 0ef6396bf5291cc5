#![allow(dead_code)]
//! A stand-in for SoundCloud's OAuth token endpoint on 127.0.0.1 (a random port): it records
//! every request it receives (method, path, headers, the decoded form) and answers as the test
//! set it — a status and a body, or never.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Form, Router};

/// How the endpoint answers.
#[derive(Clone, Debug)]
pub enum Answer {
    Reply {
        status: u16,
        content_type: &'static str,
        body: String,
    },
    /// Accepts the request and never answers (well, after a minute).
    Hang,
}

impl Answer {
    pub fn json(status: u16, body: &str) -> Self {
        Self::Reply {
            status,
            content_type: "application/json",
            body: body.to_owned(),
        }
    }

    pub fn text(status: u16, content_type: &'static str, body: &str) -> Self {
        Self::Reply {
            status,
            content_type,
            body: body.to_owned(),
        }
    }
}

/// One request as the endpoint saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub content_type: Option<String>,
    pub accept: Option<String>,
    /// The body decoded as `application/x-www-form-urlencoded`, in order; `None` when it is not.
    pub form: Option<Vec<(String, String)>>,
}

impl Received {
    /// The form as `name=value` strings, in the order sent.
    pub fn pairs(&self) -> Vec<String> {
        self.form
            .as_ref()
            .unwrap_or_else(|| panic!("not a form request: {self:?}"))
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}

struct Inner {
    answer: Mutex<Answer>,
    received: Mutex<Vec<Received>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct FakeSoundCloud {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl FakeSoundCloud {
    /// Serves on the current tokio runtime until dropped; answers `answer` until told otherwise.
    pub async fn start(answer: Answer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake token endpoint");
        let addr = listener.local_addr().expect("fake token endpoint address");
        let inner = Arc::new(Inner {
            answer: Mutex::new(answer),
            received: Mutex::default(),
        });
        // Every path lands here, so a request to a wrong path is recorded too.
        let app = Router::new().fallback(token).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, inner, task }
    }

    /// The value of `SOUNDCLOUD_TOKEN_URL`.
    pub fn url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }

    pub fn answer(&self, answer: Answer) {
        *lock(&self.inner.answer) = answer;
    }

    /// The requests received since the last call.
    pub fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *lock(&self.inner.received))
    }
}

impl Drop for FakeSoundCloud {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn token(
    State(inner): State<Arc<Inner>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let text = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = text(header::CONTENT_TYPE);
    let mut request = axum::http::Request::new(Body::from(body));
    *request.method_mut() = method.clone();
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        request
            .headers_mut()
            .insert(header::CONTENT_TYPE, ct.clone());
    }
    let form = Form::<Vec<(String, String)>>::from_request(request, &())
        .await
        .ok()
        .map(|Form(pairs)| pairs);
    lock(&inner.received).push(Received {
        method: method.to_string(),
        path: uri.path().to_owned(),
        content_type,
        accept: text(header::ACCEPT),
        form,
    });
    let answer = lock(&inner.answer).clone();
    match answer {
        Answer::Reply {
            status,
            content_type,
            body,
        } => (
            StatusCode::from_u16(status).expect("a valid status"),
            [(header::CONTENT_TYPE, content_type)],
            body,
        )
            .into_response(),
        Answer::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            StatusCode::GATEWAY_TIMEOUT.into_response()
        }
    }
}
