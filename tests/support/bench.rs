//! What the benchmarks print beside each target.

/// `PASS` or `FAIL`.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "FAIL"
    }
}
