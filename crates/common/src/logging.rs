//! Logging: one JSON object per line on stdout (what CloudWatch indexes), with the fields of the
//! current span (the Lambda runtime's span carries the request id).

use tracing_subscriber::EnvFilter;

/// Level from `AWS_LAMBDA_LOG_LEVEL`, then `RUST_LOG`, INFO by default.
pub fn init() {
    let filter = std::env::var("AWS_LAMBDA_LOG_LEVEL")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|level| EnvFilter::try_new(level.to_lowercase()).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_current_span(true)
        .with_span_list(false)
        .flatten_event(true)
        .with_target(true)
        .try_init();
}

/// A subject as logs may show it: `abcd***yz`, or `ab***` when it is short.
pub fn mask(subject: &str) -> String {
    let chars: Vec<char> = subject.chars().collect();
    if chars.len() <= 6 {
        let head: String = chars.iter().take(2).collect();
        format!("{head}***")
    } else {
        let head: String = chars[..4].iter().collect();
        let tail: String = chars[chars.len() - 2..].iter().collect();
        format!("{head}***{tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn masks_subjects() {
        assert_eq!(mask("alice-the-user"), "alic***er");
        assert_eq!(mask("bob"), "bo***");
        assert_eq!(mask("abcdef"), "ab***");
        assert_eq!(mask("abcdefg"), "abcd***fg");
        assert_eq!(mask("ééééééééé"), "éééé***éé");
        assert_eq!(mask(""), "***");
    }
}
