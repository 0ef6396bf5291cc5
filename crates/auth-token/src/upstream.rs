//! SoundCloud's token endpoint: the port the service posts a form to, and its HTTP adapter.

use std::time::Duration;

use async_trait::async_trait;

use crate::grant::Form;

/// SoundCloud's token answers are a few hundred bytes; anything past this is not one.
pub const MAX_REPLY_BYTES: usize = 64 * 1024;

/// What the token endpoint answered, whatever the status.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting, sending or reading failed. The cause carries no form value.
    #[error("{0}")]
    Unreachable(String),
    #[error("the answer ({status}) is larger than {MAX_REPLY_BYTES} bytes")]
    TooLarge { status: u16 },
}

/// Posts the form, `application/x-www-form-urlencoded`, and returns the answer.
#[async_trait]
pub trait TokenEndpoint: Send + Sync {
    async fn exchange(&self, form: &Form) -> Result<Reply, Failure>;
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("SOUNDCLOUD_TOKEN_URL={0:?} is not an http(s) URL")]
    BadUrl(String),
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

/// The real endpoint over HTTPS (rustls). One client per process: warm invocations reuse its
/// connections.
pub struct HttpTokenEndpoint {
    client: reqwest::Client,
    url: reqwest::Url,
    timeout: Duration,
}

impl HttpTokenEndpoint {
    pub fn new(url: &str, timeout: Duration) -> Result<Self, EndpointError> {
        let url = reqwest::Url::parse(url)
            .ok()
            .filter(|u| matches!(u.scheme(), "https" | "http") && u.has_host())
            .ok_or_else(|| EndpointError::BadUrl(url.to_owned()))?;
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // A redirect would carry the client secret to wherever it points.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| EndpointError::Client(e.to_string()))?;
        Ok(Self {
            client,
            url,
            timeout,
        })
    }

    fn failure(&self, err: reqwest::Error) -> Failure {
        if err.is_timeout() {
            return Failure::Timeout(self.timeout);
        }
        // reqwest's errors name the URL and the I/O cause, never the request body.
        let err = err.without_url();
        let mut cause = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            cause.push_str(": ");
            cause.push_str(&s.to_string());
            source = s.source();
        }
        Failure::Unreachable(cause)
    }
}

#[async_trait]
impl TokenEndpoint for HttpTokenEndpoint {
    async fn exchange(&self, form: &Form) -> Result<Reply, Failure> {
        let mut response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .form(form.fields())
            .send()
            .await
            .map_err(|e| self.failure(e))?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failure(e))? {
            if body.len() + chunk.len() > MAX_REPLY_BYTES {
                return Err(Failure::TooLarge { status });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Reply { status, body })
    }
}
