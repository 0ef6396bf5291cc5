//! SoundCloud's short links (`https://on.soundcloud.com/{code}`: what the app's Share button
//! copies). Neither scdl 3.0.9 nor its yt-dlp fetch one ("No suitable extractor found"), so we
//! ask where it leads: one GET, redirects not followed, the `Location` read, its query (the
//! sharing app's tracking parameters) and fragment dropped, and the result checked as any URL we
//! fetch. A short link to another short link is followed a few hops at most.

use std::time::Duration;

use url::Url;

use crate::scdl::FetchError;
use crate::validate::check_url;

pub const SHORT_LINK_HOST: &str = "on.soundcloud.com";

/// Most short links followed for one link.
const MAX_HOPS: usize = 3;

/// Whether `url` is a SoundCloud short link (it must be expanded before anything fetches it).
pub fn is_short_link(url: &str) -> bool {
    Url::parse(url).is_ok_and(|u| u.host_str() == Some(SHORT_LINK_HOST))
}

/// Expands short links. Cheap to clone (the HTTP client is shared).
#[derive(Clone, Debug)]
pub struct ShortLinks {
    /// `None` when no client could be built (no usable TLS roots): every short link then fails
    /// as unreachable, and the start-up log said why.
    client: Option<reqwest::Client>,
    /// Where `on.soundcloud.com`'s paths are asked instead (`SOUNDCLOUD_SHORT_LINK_BASE`, for
    /// tests: `http://127.0.0.1:PORT/on`); `None`: the link itself.
    base: Option<String>,
}

impl ShortLinks {
    pub fn new(base: Option<String>, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            // The answer we want is the redirect itself.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| tracing::error!(error = %e, "no HTTP client for short links"))
            .ok();
        Self {
            client,
            base: base.map(|b| b.trim_end_matches('/').to_owned()),
        }
    }

    /// Where `url` leads when it is a short link (else `url` itself): a URL that passed
    /// [`check_url`], without query or fragment.
    pub async fn expand(&self, url: &str) -> Result<String, FetchError> {
        let mut current = url.to_owned();
        for _ in 0..MAX_HOPS {
            if !is_short_link(&current) {
                return Ok(current);
            }
            current = self.follow(&current).await?;
        }
        Err(FetchError::Failed(
            "The short link leads to more short links; open it and paste the address it shows"
                .into(),
        ))
    }

    /// One hop: the canonical form of where the short link `url` redirects.
    async fn follow(&self, url: &str) -> Result<String, FetchError> {
        let parsed = Url::parse(url).map_err(|_| FetchError::NotFound)?;
        let asked = match &self.base {
            Some(base) => format!("{base}{}", parsed.path()),
            None => format!("https://{SHORT_LINK_HOST}{}", parsed.path()),
        };
        let client = self.client.as_ref().ok_or(FetchError::Unreachable)?;
        let response = client.get(&asked).send().await.map_err(|e| {
            tracing::info!(error = %e, "a short link could not be expanded");
            FetchError::Unreachable
        })?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or(FetchError::NotFound)?;
            return canonical(&parsed, location);
        }
        Err(match status.as_u16() {
            404 | 410 => FetchError::NotFound,
            429 => FetchError::RateLimited,
            _ if status.is_server_error() => FetchError::Unreachable,
            // A page instead of a redirect: the code names nothing.
            _ => FetchError::NotFound,
        })
    }
}

/// `location` (maybe relative to the short link) without query and fragment, if we fetch it.
fn canonical(short: &Url, location: &str) -> Result<String, FetchError> {
    let mut target = short.join(location).map_err(|_| FetchError::NotFound)?;
    target.set_query(None);
    target.set_fragment(None);
    let target = String::from(target);
    check_url(&target).map_err(|why| {
        FetchError::Failed(format!(
            "The short link leads to an address we do not fetch ({why})"
        ))
    })?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn short() -> Url {
        Url::parse("https://on.soundcloud.com/AbC123").unwrap()
    }

    #[test]
    fn short_links_are_told_by_their_host() {
        assert!(is_short_link("https://on.soundcloud.com/AbC123"));
        assert!(is_short_link("https://ON.soundcloud.com/AbC123"));
        assert!(!is_short_link("https://soundcloud.com/a/b"));
        assert!(!is_short_link("https://on.soundcloud.com.evil.example/x"));
        assert!(!is_short_link("not a url"));
    }

    #[test]
    fn the_target_loses_the_sharing_parameters_and_must_pass_our_checks() {
        assert_eq!(
            canonical(
                &short(),
                "https://soundcloud.com/artist/track?ref=clipboard&p=i&c=1&si=abc#t=1"
            )
            .unwrap(),
            "https://soundcloud.com/artist/track"
        );
        assert_eq!(
            canonical(
                &short(),
                "https://m.soundcloud.com/artist/sets/name/s-Tok3n?si=x"
            )
            .unwrap(),
            "https://m.soundcloud.com/artist/sets/name/s-Tok3n"
        );
        // Relative to the short link: another short link (followed as the next hop).
        assert_eq!(
            canonical(&short(), "/Other1").unwrap(),
            "https://on.soundcloud.com/Other1"
        );
        for elsewhere in [
            "https://evil.example/artist/track",
            "http://soundcloud.com/artist/track",
            "https://soundcloud.com:8443/artist/track",
        ] {
            let err = canonical(&short(), elsewhere).unwrap_err();
            assert!(
                matches!(&err, FetchError::Failed(m) if m.contains("we do not fetch")),
                "{elsewhere}: {err:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_link_that_is_not_short_is_left_alone_without_a_request() {
        // Nothing listens on port 9 of loopback: any request would fail as Unreachable.
        let links = ShortLinks::new(Some("http://127.0.0.1:9".into()), Duration::from_secs(1));
        let url = "https://soundcloud.com/artist/track?x=1";
        assert_eq!(links.expand(url).await.unwrap(), url);
        assert_eq!(
            links.expand("https://on.soundcloud.com/AbC").await,
            Err(FetchError::Unreachable)
        );
    }

    /// A one-line-per-path HTTP server on loopback: `answers` maps a path to the status line and
    /// headers it gets; anything else is a 404. Its base URL.
    async fn server(answers: &'static [(&'static str, &'static str)]) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let request = String::from_utf8_lossy(&request);
                let path = request.split(' ').nth(1).unwrap_or("");
                let head = answers
                    .iter()
                    .find(|(p, _)| *p == path)
                    .map_or("HTTP/1.1 404 Not Found", |(_, head)| head);
                let reply = format!("{head}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        base
    }

    #[tokio::test]
    async fn what_the_short_link_host_answers_becomes_a_reason() {
        let base = server(&[
            (
                "/track",
                "HTTP/1.1 302 Found\r\nlocation: https://soundcloud.com/a/b?si=1",
            ),
            ("/hop", "HTTP/1.1 301 Moved Permanently\r\nlocation: /track"),
            (
                "/loop",
                "HTTP/1.1 302 Found\r\nlocation: https://on.soundcloud.com/loop",
            ),
            ("/bare", "HTTP/1.1 302 Found"),
            ("/page", "HTTP/1.1 200 OK"),
            ("/slow", "HTTP/1.1 429 Too Many Requests"),
            ("/down", "HTTP/1.1 503 Service Unavailable"),
        ])
        .await;
        let links = ShortLinks::new(Some(format!("{base}/")), Duration::from_secs(5));
        let expand = |code: &str| {
            let links = links.clone();
            let url = format!("https://on.soundcloud.com/{code}");
            async move { links.expand(&url).await }
        };
        assert_eq!(expand("track").await.unwrap(), "https://soundcloud.com/a/b");
        assert_eq!(expand("hop").await.unwrap(), "https://soundcloud.com/a/b");
        assert!(
            matches!(expand("loop").await, Err(FetchError::Failed(m)) if m.contains("more short links"))
        );
        assert_eq!(expand("bare").await, Err(FetchError::NotFound));
        assert_eq!(expand("page").await, Err(FetchError::NotFound));
        assert_eq!(expand("gone").await, Err(FetchError::NotFound));
        assert_eq!(expand("slow").await, Err(FetchError::RateLimited));
        assert_eq!(expand("down").await, Err(FetchError::Unreachable));
    }
}
