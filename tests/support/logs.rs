//! Times in a function's JSON log lines (`timestamp` RFC 3339, `message`), for the benchmarks'
//! phase figures.

use serde_json::Value;

pub struct LogTimes(Vec<Value>);

impl LogTimes {
    /// Every JSON line of `logs`; other lines are skipped.
    pub fn parse(logs: &str) -> Self {
        Self(
            logs.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect(),
        )
    }

    /// Seconds since midnight of the first line with `message`.
    pub fn first(&self, message: &str) -> Option<f64> {
        self.at(message).next()
    }

    /// Seconds since midnight of the last line with `message`.
    pub fn last(&self, message: &str) -> Option<f64> {
        self.at(message).next_back()
    }

    fn at<'a>(&'a self, message: &'a str) -> impl DoubleEndedIterator<Item = f64> + 'a {
        self.0
            .iter()
            .filter(move |l| l["message"] == message)
            .filter_map(seconds)
    }
}

/// Seconds since midnight of a log line's RFC 3339 timestamp.
fn seconds(line: &Value) -> Option<f64> {
    let clock = line["timestamp"]
        .as_str()?
        .split('T')
        .nth(1)?
        .trim_end_matches('Z');
    let mut parts = clock.split(':').map(|p| p.parse::<f64>().ok());
    Some(parts.next()?? * 3600.0 + parts.next()?? * 60.0 + parts.next()??)
}
