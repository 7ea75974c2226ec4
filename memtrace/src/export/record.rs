//! The one record of a notable event (a failure, or a large or high-order allocation) that
//! `memtrace trace` prints, the daemon serves at [`FAILURES_PATH`] and `memtrace top` lists,
//! with its JSON schema; and the clock that dates kernel events.

use std::time::{Duration, SystemTime};

use memtrace_common::{Allocator, GFP_UNKNOWN, NotableEvent};
use serde::{Deserialize, Serialize};

use crate::{
    bpf::events,
    label::{UNKNOWN, gfp::GfpTable, symbolize::Symbolizer},
};

/// Where the latest allocation failures are served, as JSON (`memtrace top --from` reads it).
pub const FAILURES_PATH: &str = "/api/failures";

/// One entry of [`FAILURES_PATH`]: an [`EventRecord`] with a sequence number that grows by
/// one per failure the daemon has seen (a reader that polls keeps the highest it has read
/// and skips what it already has).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeqRecord {
    pub seq: u64,
    #[serde(flatten)]
    pub record: EventRecord,
}

/// One notable event as memtrace shows it: a line of `memtrace trace` (and its `--json`
/// schema), an entry of the daemon's [`FAILURES_PATH`], a failure in `top`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventRecord {
    /// Wall-clock time, RFC 3339 with microseconds, UTC.
    pub time: String,
    /// CLOCK_MONOTONIC nanoseconds of the event.
    pub monotonic_ns: u64,
    pub cpu: u32,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub allocator: String,
    /// `failure` or `large`.
    pub kind: String,
    /// Bytes requested and allocated (kmalloc, kmem_cache, vmalloc, percpu; pages: the block size).
    pub bytes_requested: u64,
    pub bytes_allocated: u64,
    /// Page order (page allocations only).
    pub order: Option<u32>,
    /// The GFP flags decoded with the running kernel's names, `unknown` if the tracepoint has none.
    pub gfp: String,
    /// `function+0xoff` of the caller, when the tracepoint reports one and it resolves.
    pub call_site: Option<String>,
    /// Symbolized kernel stack, innermost first (`--stacks`).
    pub stack: Option<Vec<String>>,
}

impl EventRecord {
    /// The record of kernel event `e`: GFP flags decoded with `gfp`, call site and stack
    /// symbolized with `symbols` (never an address), times from `clock`.
    pub fn new(
        e: &NotableEvent,
        gfp: Option<&GfpTable>,
        symbols: Option<&Symbolizer>,
        stack: Option<&[u64]>,
        clock: &Clock,
    ) -> EventRecord {
        let allocator = events::allocator(e);
        let gfp = if e.gfp == GFP_UNKNOWN {
            UNKNOWN.to_string()
        } else {
            gfp.map_or_else(|| UNKNOWN.into(), |t| t.decode(e.gfp))
        };
        let call_site = (e.call_site != 0)
            .then(|| {
                symbols
                    .and_then(|s| s.resolve(e.call_site))
                    .map(|s| s.with_offset())
            })
            .flatten();
        let stack = stack.map(|frames| {
            let names: Vec<String> = frames
                .iter()
                .map(|&ip| {
                    symbols
                        .and_then(|s| s.resolve(ip))
                        .map_or_else(|| UNKNOWN.to_string(), |s| s.with_offset())
                })
                .collect();
            // The innermost frames are the tracing machinery itself (memtrace's program and the
            // tracepoint's glue): the stack starts at the allocator.
            let skip = names.iter().take_while(|f| is_tracing_frame(f)).count();
            names[skip..].to_vec()
        });
        EventRecord {
            time: clock.wall(e.ts_ns),
            monotonic_ns: e.ts_ns,
            cpu: e.cpu,
            pid: e.tgid,
            tid: e.tid,
            comm: escape(&events::comm(e)),
            allocator: allocator.map_or(UNKNOWN, Allocator::name).to_string(),
            kind: events::Kind::of(e).name().to_string(),
            bytes_requested: e.bytes_req,
            bytes_allocated: e.bytes_alloc,
            order: (allocator == Some(Allocator::Page)).then_some(e.order),
            gfp,
            call_site,
            stack,
        }
    }
}

/// A task name with control characters escaped: any process can name itself anything, and
/// raw escapes would forge lines or drive the terminal.
fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

fn is_tracing_frame(f: &str) -> bool {
    [
        "bpf_prog_",
        "bpf_trace_run",
        "__bpf_trace_",
        "trace_call_bpf",
        "perf_trace_",
        "__traceiter_",
        "perf_tp_event",
        "perf_trace_run_bpf_submit",
    ]
    .iter()
    .any(|p| f.starts_with(p))
}

/// Maps CLOCK_MONOTONIC event times to wall-clock time.
pub struct Clock {
    mono_ns: u64,
    wall: SystemTime,
}

impl Clock {
    pub fn now() -> Clock {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: a valid timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        Clock {
            mono_ns: ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64,
            wall: SystemTime::now(),
        }
    }

    /// The time now, RFC 3339 UTC with microseconds.
    pub fn wall_now() -> String {
        let c = Clock::now();
        c.wall(c.mono_ns)
    }

    /// RFC 3339 UTC with microseconds.
    pub fn wall(&self, mono_ns: u64) -> String {
        let t = if mono_ns >= self.mono_ns {
            self.wall + Duration::from_nanos(mono_ns - self.mono_ns)
        } else {
            self.wall - Duration::from_nanos(self.mono_ns - mono_ns)
        };
        let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        let (y, m, dd) = civil_from_days(days as i64);
        format!(
            "{y:04}-{m:02}-{dd:02}T{:02}:{:02}:{:02}.{:06}Z",
            rem / 3600,
            rem % 3600 / 60,
            rem % 60,
            d.subsec_micros()
        )
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use memtrace_common::EVENT_FAILED;

    use super::*;

    #[test]
    fn comms_are_escaped() {
        assert_eq!(escape("sh"), "sh");
        assert_eq!(escape("a\x1b[2Jb\n"), "a\\u{1b}[2Jb\\n");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(20_778), (2026, 11, 21));
    }

    #[test]
    fn records_have_no_addresses_and_decode_gfp() {
        let gfp = GfpTable::from_print_fmt(include_str!(
            "../../testdata/linux-6.18/kmem_kmalloc.format"
        ))
        .unwrap();
        let mut e = NotableEvent {
            ts_ns: 5_000_000_000,
            call_site: 0xffff_ffff_8123_4567,
            bytes_req: 100,
            bytes_alloc: 128,
            gfp: 0xcc0 | 0x100,
            tgid: 7,
            tid: 8,
            cpu: 1,
            allocator: Allocator::Kmalloc as u32,
            order: 0,
            flags: EVENT_FAILED,
            stack_id: -1,
            _pad: 0,
            comm: [0; 16],
        };
        e.comm[..2].copy_from_slice(b"sh");
        let clock = Clock {
            mono_ns: 5_000_000_000,
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(86_400),
        };
        let r = EventRecord::new(&e, Some(&gfp), None, Some(&[0xffff_ffff_8100_0000]), &clock);
        assert_eq!(r.time, "1970-01-02T00:00:00.000000Z");
        assert_eq!(r.gfp, "GFP_KERNEL|__GFP_ZERO");
        assert_eq!(r.kind, "failure");
        assert_eq!(
            r.call_site, None,
            "unresolvable call sites are omitted, not printed raw"
        );
        assert_eq!(r.stack.as_deref(), Some(&["unknown".to_string()][..]));
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("ffff"), "{json}");
        let mut out = Vec::new();
        crate::cmd::trace::print_human(&r, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("FAILURE") && text.contains("100/128 B"),
            "{text}"
        );
        assert!(!text.contains("ffff"));
    }
}
