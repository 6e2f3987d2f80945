//! Process and Tokio runtime metrics: observable instruments whose callbacks read the values when
//! a reader collects (a periodic OTLP export or a Prometheus scrape), never on the request path.
//!
//! What comes in: a meter of the SDK provider and, for the runtime metrics, the handle of the
//! service's Tokio runtime. What goes out: the instruments below, registered once.
//!
//! Process metrics follow the OpenTelemetry semantic conventions (`process.*`); on Linux they are
//! read from `getrusage(2)` and `/proc/self`. Elsewhere only `process.cpu.time` and
//! `process.uptime` are reported. A value that cannot be read is skipped for that collection.
//!
//! | instrument | kind | unit | attributes | Prometheus name |
//! |---|---|---|---|---|
//! | `process.cpu.time` | counter | `s` | `cpu.mode` = `user` / `system` | `process_cpu_time_seconds_total` |
//! | `process.memory.usage` | up-down counter | `By` | | `process_memory_usage_bytes` |
//! | `process.memory.virtual` | up-down counter | `By` | | `process_memory_virtual_bytes` |
//! | `process.open_file_descriptor.count` | up-down counter | `{file_descriptor}` | | `process_open_file_descriptor_count` |
//! | `process.open_file_descriptor.limit` | gauge | `{file_descriptor}` | | `process_open_file_descriptor_limit` |
//! | `process.thread.count` | up-down counter | `{thread}` | | `process_thread_count` |
//! | `process.uptime` | gauge | `s` | | `process_uptime_seconds` |
//!
//! `process.open_file_descriptor.limit` (the soft `RLIMIT_NOFILE`) is not in the semantic
//! conventions; it is there so that file-descriptor exhaustion can be alerted on as a ratio.
//!
//! Tokio has no semantic conventions; the names follow Tokio's stable `RuntimeMetrics`:
//!
//! | instrument | kind | unit | attributes | Prometheus name |
//! |---|---|---|---|---|
//! | `tokio.runtime.workers` | gauge | `{worker}` | | `tokio_runtime_workers` |
//! | `tokio.runtime.alive_tasks` | gauge | `{task}` | | `tokio_runtime_alive_tasks` |
//! | `tokio.runtime.global_queue.depth` | gauge | `{task}` | | `tokio_runtime_global_queue_depth` |
//! | `tokio.runtime.worker.busy_time` | counter | `s` | `tokio.worker.index` | `tokio_runtime_worker_busy_time_seconds_total` |
//!
//! Budget-forced yields (`RuntimeMetrics::budget_forced_yield_count`) exist only in builds with
//! `--cfg tokio_unstable`, so they are not reported.

use std::time::Instant;

use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

/// `process.cpu.time`: CPU seconds by `cpu.mode`.
pub const PROCESS_CPU_TIME: &str = "process.cpu.time";
/// `process.memory.usage`: resident set size in bytes.
pub const PROCESS_MEMORY_USAGE: &str = "process.memory.usage";
/// `process.memory.virtual`: virtual memory size in bytes.
pub const PROCESS_MEMORY_VIRTUAL: &str = "process.memory.virtual";
/// `process.open_file_descriptor.count`: open file descriptors.
pub const PROCESS_OPEN_FILE_DESCRIPTORS: &str = "process.open_file_descriptor.count";
/// `process.open_file_descriptor.limit`: the soft limit on open file descriptors (not in the
/// semantic conventions).
pub const PROCESS_OPEN_FILE_DESCRIPTOR_LIMIT: &str = "process.open_file_descriptor.limit";
/// `process.thread.count`: threads of the process.
pub const PROCESS_THREAD_COUNT: &str = "process.thread.count";
/// `process.uptime`: seconds since the process started.
pub const PROCESS_UPTIME: &str = "process.uptime";
/// `tokio.runtime.workers`: worker threads of the runtime.
pub const TOKIO_WORKERS: &str = "tokio.runtime.workers";
/// `tokio.runtime.alive_tasks`: tasks spawned and not yet finished.
pub const TOKIO_ALIVE_TASKS: &str = "tokio.runtime.alive_tasks";
/// `tokio.runtime.global_queue.depth`: tasks waiting in the runtime's global (injection) queue.
pub const TOKIO_GLOBAL_QUEUE_DEPTH: &str = "tokio.runtime.global_queue.depth";
/// `tokio.runtime.worker.busy_time`: seconds each worker spent busy, by `tokio.worker.index`.
pub const TOKIO_WORKER_BUSY_TIME: &str = "tokio.runtime.worker.busy_time";

/// Registers the process metrics on `meter`.
pub(crate) fn register_process_metrics(meter: &Meter) {
    let started = Instant::now();
    let user = [KeyValue::new("cpu.mode", "user")];
    let system = [KeyValue::new("cpu.mode", "system")];
    meter
        .f64_observable_counter(PROCESS_CPU_TIME)
        .with_unit("s")
        .with_description("Total CPU seconds broken down by different CPU modes.")
        .with_callback(move |o| {
            if let Some((u, s)) = cpu_times() {
                o.observe(u, &user);
                o.observe(s, &system);
            }
        })
        .build();
    meter
        .i64_observable_up_down_counter(PROCESS_MEMORY_USAGE)
        .with_unit("By")
        .with_description("The amount of physical memory in use.")
        .with_callback(|o| {
            if let Some((_, rss)) = memory() {
                o.observe(rss, &[]);
            }
        })
        .build();
    meter
        .i64_observable_up_down_counter(PROCESS_MEMORY_VIRTUAL)
        .with_unit("By")
        .with_description("The amount of committed virtual memory.")
        .with_callback(|o| {
            if let Some((virt, _)) = memory() {
                o.observe(virt, &[]);
            }
        })
        .build();
    meter
        .i64_observable_up_down_counter(PROCESS_OPEN_FILE_DESCRIPTORS)
        .with_unit("{file_descriptor}")
        .with_description("Number of file descriptors in use by the process.")
        .with_callback(|o| {
            if let Some(n) = open_fds() {
                o.observe(n, &[]);
            }
        })
        .build();
    meter
        .i64_observable_gauge(PROCESS_OPEN_FILE_DESCRIPTOR_LIMIT)
        .with_unit("{file_descriptor}")
        .with_description("The soft limit on file descriptors the process may open (RLIMIT_NOFILE).")
        .with_callback(|o| {
            if let Some(n) = fd_limit() {
                o.observe(n, &[]);
            }
        })
        .build();
    meter
        .i64_observable_up_down_counter(PROCESS_THREAD_COUNT)
        .with_unit("{thread}")
        .with_description("Process threads count.")
        .with_callback(|o| {
            if let Some(n) = threads() {
                o.observe(n, &[]);
            }
        })
        .build();
    meter
        .f64_observable_gauge(PROCESS_UPTIME)
        .with_unit("s")
        .with_description("The time the process has been running.")
        .with_callback(move |o| {
            let up = uptime().unwrap_or_else(|| started.elapsed().as_secs_f64());
            o.observe(up, &[]);
        })
        .build();
}

/// Registers the Tokio runtime metrics of `runtime` on `meter`.
pub(crate) fn register_runtime_metrics(meter: &Meter, runtime: tokio::runtime::Handle) {
    let h = runtime.clone();
    meter
        .i64_observable_gauge(TOKIO_WORKERS)
        .with_unit("{worker}")
        .with_description("Worker threads of the Tokio runtime.")
        .with_callback(move |o| o.observe(to_i64(h.metrics().num_workers()), &[]))
        .build();
    let h = runtime.clone();
    meter
        .i64_observable_gauge(TOKIO_ALIVE_TASKS)
        .with_unit("{task}")
        .with_description("Tasks of the Tokio runtime that are spawned and not yet finished.")
        .with_callback(move |o| o.observe(to_i64(h.metrics().num_alive_tasks()), &[]))
        .build();
    let h = runtime.clone();
    meter
        .i64_observable_gauge(TOKIO_GLOBAL_QUEUE_DEPTH)
        .with_unit("{task}")
        .with_description("Tasks waiting in the Tokio runtime's global queue.")
        .with_callback(move |o| o.observe(to_i64(h.metrics().global_queue_depth()), &[]))
        .build();
    let h = runtime;
    let workers = h.metrics().num_workers();
    let labels: Vec<[KeyValue; 1]> = (0..workers)
        .map(|i| [KeyValue::new("tokio.worker.index", to_i64(i))])
        .collect();
    meter
        .f64_observable_counter(TOKIO_WORKER_BUSY_TIME)
        .with_unit("s")
        .with_description("Seconds each Tokio worker thread spent busy (polling tasks).")
        .with_callback(move |o| {
            let m = h.metrics();
            for (i, attrs) in labels.iter().enumerate() {
                o.observe(m.worker_total_busy_duration(i).as_secs_f64(), attrs);
            }
        })
        .build();
}

fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// User and system CPU seconds of the whole process.
#[cfg(unix)]
fn cpu_times() -> Option<(f64, f64)> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: `usage` is a valid, writable `rusage`; getrusage only writes into it.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: getrusage returned 0, so it filled the struct (and it was zeroed before).
    let usage = unsafe { usage.assume_init() };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some((secs(usage.ru_utime), secs(usage.ru_stime)))
}

#[cfg(not(unix))]
fn cpu_times() -> Option<(f64, f64)> {
    None
}

#[cfg(target_os = "linux")]
#[allow(clippy::unnecessary_cast)]
fn page_size() -> i64 {
    static PAGE: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as i64, // c_long: i64 here, i32 on 32-bit targets
        _ => 4096,
    })
}

/// Virtual and resident bytes, from `/proc/self/statm`.
#[cfg(target_os = "linux")]
fn memory() -> Option<(i64, i64)> {
    let text = std::fs::read_to_string("/proc/self/statm").ok()?;
    let mut fields = text.split_ascii_whitespace().map(|f| f.parse::<i64>().ok());
    let size = fields.next()??;
    let resident = fields.next()??;
    let page = page_size();
    Some((size.saturating_mul(page), resident.saturating_mul(page)))
}

#[cfg(not(target_os = "linux"))]
fn memory() -> Option<(i64, i64)> {
    None
}

/// Entries of `/proc/self/fd` (the directory handle being read is not counted).
#[cfg(target_os = "linux")]
fn open_fds() -> Option<i64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    Some(to_i64(n.saturating_sub(1)))
}

#[cfg(not(target_os = "linux"))]
fn open_fds() -> Option<i64> {
    None
}

/// The soft `RLIMIT_NOFILE` (`None` when unlimited or unreadable).
#[cfg(unix)]
fn fd_limit() -> Option<i64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable `rlimit`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 || lim.rlim_cur == libc::RLIM_INFINITY {
        return None;
    }
    i64::try_from(lim.rlim_cur).ok()
}

#[cfg(not(unix))]
fn fd_limit() -> Option<i64> {
    None
}

/// The fields of `/proc/self/stat` after the command name, starting with field 3 (`state`).
#[cfg(target_os = "linux")]
fn stat_field(index_from_one: usize) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    rest.split_ascii_whitespace()
        .nth(index_from_one.checked_sub(3)?)?
        .parse()
        .ok()
}

#[cfg(target_os = "linux")]
fn threads() -> Option<i64> {
    // Field 20: num_threads.
    stat_field(20).and_then(|n| i64::try_from(n).ok())
}

#[cfg(not(target_os = "linux"))]
fn threads() -> Option<i64> {
    None
}

/// Seconds since the process started: system uptime minus the process' start time (field 22 of
/// `/proc/self/stat`, in clock ticks after boot).
#[cfg(target_os = "linux")]
fn uptime() -> Option<f64> {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    // SAFETY: sysconf has no preconditions.
    let ticks = *TICKS.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        n if n > 0 => n as f64,
        _ => 100.0,
    });
    let start = stat_field(22)? as f64 / ticks;
    let system: f64 = std::fs::read_to_string("/proc/uptime")
        .ok()?
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((system - start).max(0.0))
}

#[cfg(not(target_os = "linux"))]
fn uptime() -> Option<f64> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn readers_return_plausible_values() {
        let (user, system) = cpu_times().expect("getrusage");
        assert!(user >= 0.0 && system >= 0.0);
        let (virt, rss) = memory().expect("statm");
        assert!(rss > 0 && virt >= rss, "virtual {virt} resident {rss}");
        let fds = open_fds().expect("fd dir");
        assert!(fds >= 3, "stdin, stdout, stderr at least: {fds}");
        assert!(fd_limit().is_some_and(|l| l >= fds), "limit {:?}", fd_limit());
        std::thread::scope(|s| {
            let (tx, rx) = std::sync::mpsc::channel::<()>();
            s.spawn(move || {
                let _ = rx.recv();
            });
            assert!(threads().expect("threads") >= 2, "this thread and the spawned one");
            drop(tx);
        });
        let up = uptime().expect("uptime");
        assert!((0.0..86_400.0 * 365.0).contains(&up), "{up}");
    }
}
