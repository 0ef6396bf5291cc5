//! What the benchmarks print beside each target.

/// `PASS` or `FAIL`.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}

/// Every verdict goes through here, so that any FAIL sets the exit code.
#[derive(Default)]
pub struct Verdicts {
    pub failed: bool,
}

impl Verdicts {
    pub fn check(&mut self, ok: bool) -> &'static str {
        self.failed |= !ok;
        verdict(ok)
    }
}

/// The machine the figures were taken on: cores, memory, CPU model.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or("unknown memory".to_owned(), |kb| {
            format!("{:.0} GB", kb as f64 / 1024.0 / 1024.0)
        });
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {memory}; {cpu}")
}
