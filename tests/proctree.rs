//! `tests/support/proctree.rs`, the benchmarks' process-tree memory sampler, against processes
//! whose memory is known.

#[path = "support/proctree.rs"]
mod proctree;

use std::process::{Command, Stdio};
use std::time::Duration;

use proctree::PeakTree;

/// A child shell that holds a ~30 MB string for a second.
const HOLD_30MB: &str = "sh -c 'x=$(head -c 30000000 /dev/zero | tr \"\\0\" a); sleep 1'";

#[test]
fn the_tree_peak_counts_every_descendant_and_the_own_peak_only_the_root() {
    let mut root = Command::new("sh")
        .args(["-c", &format!("{HOLD_30MB} & {HOLD_30MB} & wait")])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let tree = PeakTree::start(root.id(), Duration::from_millis(5));
    std::thread::sleep(Duration::from_millis(800));
    let peak = tree.stop().unwrap();
    root.wait().unwrap();
    assert!(peak.own_peak > 0 && peak.own_peak < 10_000_000, "{peak:?}");
    assert!(peak.max_processes >= 3, "{peak:?}");
    assert!(peak.tree_peak >= 55_000_000, "{peak:?}");
    assert!(peak.samples >= 10, "{peak:?}");
}

#[test]
fn a_forked_child_that_has_not_exec_d_is_not_counted_twice() {
    // The background group is a forked bash that never execs: its VmRSS shows the ~30 MB it
    // shares copy-on-write with its parent.
    // It says when `x` is built and the group started, so no sample sees the command
    // substitution's head and tr (a loaded machine may still be running them after 300 ms).
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let mut root = Command::new("bash")
        .args([
            "-c",
            "x=$(head -c 30000000 /dev/zero | tr '\\0' a); { sleep 2; true; } & touch \"$READY\"; wait",
        ])
        .env("READY", &ready)
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !ready.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the script never got ready"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(100));
    let tree = PeakTree::start(root.id(), Duration::from_millis(5));
    std::thread::sleep(Duration::from_millis(400));
    let peak = tree.stop().unwrap();
    root.wait().unwrap();
    assert!(peak.own_peak >= 30_000_000, "{peak:?}");
    assert!(peak.tree_peak < peak.own_peak + 10_000_000, "{peak:?}");
    // bash and sleep (the subshell is not counted).
    assert_eq!(peak.max_processes, 2, "{peak:?}");
}

#[test]
fn a_process_that_cannot_be_read_is_an_error_not_a_zero() {
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    let err = PeakTree::start(pid, Duration::from_millis(5))
        .stop()
        .unwrap_err();
    assert!(err.contains(&format!("/proc/{pid}")), "{err}");
}
