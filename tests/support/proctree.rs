//! Peak memory of a process and everything it started: a background thread lists `/proc` every
//! few milliseconds, finds the root's live descendants through each process's parent id, and sums
//! their resident sets. The Lambda's memory is mostly its scdl / yt-dlp / ffmpeg children, which
//! the root's own VmHWM never sees.
//!
//! ```ignore
//! let tree = PeakTree::start(child.id(), Duration::from_millis(10));
//! // … run the workload …
//! let peak = tree.stop()?; // Err when /proc could not be read: print FAIL, never PASS
//! println!("own {} B, tree {} B", peak.own_peak, peak.tree_peak);
//! ```
//!
//! A child that has not exec'd since it was forked (a vfork'd child about to exec, a shell's
//! subshell) shares its parent's pages and is not added again; VmRSS sums still count pages
//! shared between different programs (libc) once per process, so the tree figure is an upper
//! bound.
//!
//! Stop it before the root is reaped (while it is alive or a zombie), so its VmHWM can still be
//! read; after that the sampled maximum of its VmRSS stands in for it.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// What [`PeakTree::stop`] measured, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreePeak {
    /// The root's own peak: its VmHWM when stopped (the kernel's high-water mark, which catches
    /// peaks between samples), or the largest VmRSS sampled if that is larger or unreadable.
    pub own_peak: u64,
    /// The largest sum, over samples, of the VmRSS of the root and its live descendants.
    /// A sampled figure: a child living less than one interval can be missed.
    pub tree_peak: u64,
    /// The most processes (root included) counted in one sample.
    pub max_processes: usize,
    /// Samples taken with the root readable.
    pub samples: usize,
}

/// A running sampler; see the module comment.
pub struct PeakTree {
    pid: u32,
    stop: Arc<AtomicBool>,
    handle: JoinHandle<Result<Sampled, String>>,
}

#[derive(Default)]
struct Sampled {
    own_max: u64,
    tree_max: u64,
    max_processes: usize,
    samples: usize,
}

impl PeakTree {
    /// Starts sampling `pid` and its descendants every `every` (the first sample at once).
    pub fn start(pid: u32, every: Duration) -> PeakTree {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(format!("proctree-{pid}"))
            .spawn(move || sample_until(pid, every, &flag))
            .expect("spawn the process-tree sampler");
        PeakTree { pid, stop, handle }
    }

    /// Stops sampling (after one last sample) and returns the peaks; `Err` says why there is no
    /// trustworthy figure (`/proc` unreadable, the root never seen).
    pub fn stop(self) -> Result<TreePeak, String> {
        self.stop.store(true, Ordering::Relaxed);
        let sampled = self
            .handle
            .join()
            .map_err(|_| "the process-tree sampler panicked".to_owned())??;
        let hwm = status_kb(self.pid, "VmHWM:").map(|kb| kb * 1024);
        Ok(TreePeak {
            own_peak: hwm.unwrap_or(0).max(sampled.own_max),
            tree_peak: sampled.tree_max,
            max_processes: sampled.max_processes,
            samples: sampled.samples,
        })
    }
}

fn sample_until(root: u32, every: Duration, stop: &AtomicBool) -> Result<Sampled, String> {
    let mut out = Sampled::default();
    let mut root_gone = false;
    loop {
        // Read the flag before sampling, so the last sample comes after `stop` was called.
        let last = stop.load(Ordering::Relaxed);
        if !root_gone {
            match sample(root)? {
                Some((own, tree, processes)) => {
                    out.own_max = out.own_max.max(own);
                    out.tree_max = out.tree_max.max(tree);
                    out.max_processes = out.max_processes.max(processes);
                    out.samples += 1;
                }
                None if out.samples == 0 => {
                    return Err(format!(
                        "/proc/{root}/status has no VmRSS (no such process, or /proc hides it)"
                    ))
                }
                // Exited (and reaped, or a zombie without memory): its figures are final.
                None => root_gone = true,
            }
        }
        if last {
            return Ok(out);
        }
        std::thread::sleep(every);
    }
}

/// One sample: (root's VmRSS, the tree's summed VmRSS, processes counted), or `None` when the
/// root has no resident set to read. `Err` only when `/proc` itself cannot be listed.
fn sample(root: u32) -> Result<Option<(u64, u64, usize)>, String> {
    let Some(own) = status_kb(root, "VmRSS:") else {
        return Ok(None);
    };
    let mut total = own;
    let mut processes = 1;
    for pid in descendants(root)? {
        // A process that exits between the listing and this read is simply not counted.
        if let Some(kb) = status_kb(pid, "VmRSS:") {
            total += kb;
            processes += 1;
        }
    }
    Ok(Some((own * 1024, total * 1024, processes)))
}

/// Every live process whose chain of parents reaches `root` (root excluded), except those that
/// have not called exec since they were forked: their memory layout is still their parent's
/// (a vfork'd child about to exec shows its parent's whole VmRSS, a shell's subshell shares its
/// pages copy-on-write), so adding them would count the parent's memory twice.
fn descendants(root: u32) -> Result<Vec<u32>, String> {
    let mut procs: HashMap<u32, Stat> = HashMap::new();
    let entries = std::fs::read_dir("/proc").map_err(|e| format!("cannot list /proc: {e}"))?;
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(stat) = Stat::read(pid) {
            procs.insert(pid, stat);
        }
    }
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (&pid, stat) in &procs {
        children.entry(stat.ppid).or_default().push(pid);
    }
    let root_layout = procs.get(&root).map(|s| s.layout);
    let (mut found, mut seen) = (Vec::new(), HashSet::from([root]));
    let mut queue = vec![(root, root_layout)];
    while let Some((pid, layout)) = queue.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            if !seen.insert(child) {
                continue;
            }
            let own = procs[&child].layout;
            let known = own != [0; 4];
            if !(known && Some(own) == layout) {
                found.push(child);
            }
            queue.push((child, Some(own)));
        }
    }
    Ok(found)
}

/// What `descendants` needs of `/proc/PID/stat`.
struct Stat {
    ppid: u32,
    /// startstack, start_brk, arg_start, env_start: randomised at each exec, copied by fork.
    /// Zeros when the kernel hides them (no ptrace access).
    layout: [u64; 4],
}

impl Stat {
    fn read(pid: u32) -> Option<Stat> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The fields after the command name in parentheses (which may itself contain spaces
        // and parentheses): `fields[0]` is field 3 of proc(5), the state.
        let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        Some(Stat {
            ppid: u32::try_from(field(4)?).ok()?,
            layout: [28, 47, 48, 50].map(|n| field(n).unwrap_or(0)),
        })
    }
}

/// A `kB` line of `/proc/PID/status` (`VmRSS:`, `VmHWM:`), in kB.
fn status_kb(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
