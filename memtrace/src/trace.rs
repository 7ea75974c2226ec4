//! `memtrace trace`: stream notable allocation events as they happen — every failure, and
//! kmalloc/vmalloc at or above `--min-size`, page allocations at or above `--min-order` —
//! with time, CPU, pid, comm, allocator, sizes or order, decoded GFP flags, the call site
//! (`symbol+0xoff`) and, with `--stacks`, the symbolized kernel stack. No kernel address is
//! ever printed.

use std::{
    io::Write,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use memtrace_common::{ATTR_STACKS, Allocator, Counter, EVENT_FAILED, GFP_UNKNOWN, NotableEvent};
use serde::Serialize;

use crate::{
    events,
    gfp::GfpTable,
    probes::{AttachPreference, Tracer, TracerOptions},
    symbolize::Symbolizer,
};

/// Flags of `memtrace trace`.
#[derive(Debug, Clone, clap::Args)]
pub struct TraceArgs {
    /// Show kmalloc and vmalloc allocations of at least this many bytes (failures always).
    #[arg(long = "min-size", default_value_t = 256 << 10, value_name = "BYTES")]
    pub min_size: u64,
    /// Show page allocations of at least this order (failures always).
    #[arg(long = "min-order", default_value_t = 4, value_parser = clap::value_parser!(u32).range(0..=64), value_name = "ORDER")]
    pub min_order: u32,
    /// Only this process (thread-group id); filtered in the kernel.
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Option<u32>,
    /// Only tasks with this name (comm, at most 15 characters).
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only these allocators (repeat or comma-separate).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub allocator: Vec<AllocatorArg>,
    /// Only failures.
    #[arg(long = "failures-only")]
    pub failures_only: bool,
    /// Record and print the kernel stack of each event.
    #[arg(long)]
    pub stacks: bool,
    /// One JSON object per line (schema in the README).
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "SECONDS", value_parser = parse_duration)]
    pub duration: Option<f64>,
    /// How to attach probes.
    #[arg(long, value_enum, default_value_t = AttachPreference::Auto)]
    pub attach: AttachPreference,
}

fn parse_duration(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(d) if d.is_finite() && d > 0.0 && d < 1e9 => Ok(d),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

/// An allocator name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AllocatorArg {
    Kmalloc,
    #[value(name = "kmem_cache")]
    KmemCache,
    Page,
    Vmalloc,
    Percpu,
}

impl AllocatorArg {
    fn allocator(self) -> Allocator {
        match self {
            AllocatorArg::Kmalloc => Allocator::Kmalloc,
            AllocatorArg::KmemCache => Allocator::KmemCache,
            AllocatorArg::Page => Allocator::Page,
            AllocatorArg::Vmalloc => Allocator::Vmalloc,
            AllocatorArg::Percpu => Allocator::Percpu,
        }
    }
}

/// One printed event (also the `--json` schema).
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Record {
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

/// Whether an event passes the userspace filters.
fn keep(args: &TraceArgs, e: &NotableEvent) -> bool {
    if args.failures_only && e.flags & EVENT_FAILED == 0 {
        return false;
    }
    if let Some(c) = &args.comm {
        if events::comm(e) != *c {
            return false;
        }
    }
    if !args.allocator.is_empty() {
        let Some(a) = events::allocator(e) else {
            return false;
        };
        if !args.allocator.iter().any(|x| x.allocator() == a) {
            return false;
        }
    }
    true
}

/// Converts an event into what is printed.
pub fn record(
    e: &NotableEvent,
    gfp: Option<&GfpTable>,
    symbols: Option<&Symbolizer>,
    stack: Option<&[u64]>,
    clock: &Clock,
) -> Record {
    let allocator = events::allocator(e).map_or("unknown", Allocator::name);
    let gfp = if e.gfp == GFP_UNKNOWN {
        "unknown".to_string()
    } else {
        gfp.map_or_else(|| "unknown".into(), |t| t.decode(e.gfp))
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
                    .map_or_else(|| "unknown".to_string(), |s| s.with_offset())
            })
            .collect();
        // The innermost frames are the tracing machinery itself (memtrace's program and the
        // tracepoint's glue): the stack starts at the allocator.
        let skip = names.iter().take_while(|f| is_tracing_frame(f)).count();
        names[skip..].to_vec()
    });
    Record {
        time: clock.wall(e.ts_ns),
        monotonic_ns: e.ts_ns,
        cpu: e.cpu,
        pid: e.tgid,
        tid: e.tid,
        comm: escape(&events::comm(e)),
        allocator: allocator.to_string(),
        kind: events::Kind::of(e).name().to_string(),
        bytes_requested: e.bytes_req,
        bytes_allocated: e.bytes_alloc,
        order: (allocator == "page").then_some(e.order),
        gfp,
        call_site,
        stack,
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

/// Prints one record as a human-readable line (plus indented stack frames).
pub fn print_human(r: &Record, out: &mut dyn Write) -> std::io::Result<()> {
    let size = match r.order {
        Some(o) => format!("order {o} ({} B)", r.bytes_allocated),
        None => format!("{}/{} B", r.bytes_requested, r.bytes_allocated),
    };
    writeln!(
        out,
        "{} cpu{:<3} {:>7} {:<16} {:<10} {:<7} {:<24} {} {}",
        &r.time[11..r.time.len() - 1],
        r.cpu,
        r.pid,
        r.comm,
        r.allocator,
        r.kind.to_uppercase(),
        size,
        r.gfp,
        r.call_site.as_deref().unwrap_or("-"),
    )?;
    if let Some(stack) = &r.stack {
        for f in stack {
            writeln!(out, "        {f}")?;
        }
    }
    Ok(())
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

/// Runs `memtrace trace` until Ctrl-C, SIGTERM or `--duration`.
pub async fn run(args: TraceArgs) -> anyhow::Result<()> {
    let mut tracer = Tracer::start(&TracerOptions {
        filter_tgid: args.pid.unwrap_or(0),
        attach: args.attach,
        notable_min_bytes: if args.failures_only {
            0
        } else {
            args.min_size.max(1)
        },
        notable_min_order: if args.failures_only {
            u32::MAX
        } else {
            args.min_order
        },
        attribution: if args.stacks { ATTR_STACKS } else { 0 },
        ..Default::default()
    })?;
    let attached = tracer.probes().iter().filter(|p| p.attached()).count();
    for p in tracer.probes().iter().filter(|p| !p.attached()) {
        tracing::warn!(probe = %p.probe, reason = p.note.as_deref().unwrap_or(""), "probe not attached");
    }
    let gfp = GfpTable::from_kernel().ok();
    let symbols = match Symbolizer::load() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!("call sites cannot be symbolized: {e}");
            None
        }
    };
    let ring = tracer.take_events()?;
    let mut fd = events::poll(ring)?;
    let clock = Clock::now();
    eprintln!(
        "memtrace trace: {attached} probes attached; {}",
        match args.duration {
            Some(d) => format!("stopping after {d} s"),
            None => "Ctrl-C to stop".to_string(),
        }
    );

    let deadline = async {
        match args.duration {
            Some(d) => tokio::time::sleep(Duration::from_secs_f64(d)).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(deadline);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch SIGTERM")?;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut lost_reported = 0u64;
    let mut shown = 0u64;
    let stdout = std::io::stdout();
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = tick.tick() => {
                let lost = tracer.snapshot()?.counter(Counter::RingbufFull);
                if lost > lost_reported {
                    report_lost(&args, lost - lost_reported, &mut stdout.lock())?;
                    lost_reported = lost;
                }
            }
            guard = fd.readable_mut() => {
                let mut guard = guard.context("polling the events ring buffer")?;
                let mut batch = Vec::new();
                events::drain(guard.get_inner_mut(), |e| batch.push(e));
                guard.clear_ready();
                let mut out = stdout.lock();
                for e in batch {
                    let stack = if args.stacks { tracer.stack(e.stack_id)? } else { None };
                    if !keep(&args, &e) {
                        continue;
                    }
                    let r = record(&e, gfp.as_ref(), symbols.as_ref(), stack.as_deref(), &clock);
                    if args.json {
                        serde_json::to_writer(&mut out, &r)?;
                        writeln!(out)?;
                    } else {
                        print_human(&r, &mut out)?;
                    }
                    shown += 1;
                }
                out.flush()?;
            }
        }
    }
    // Whatever arrived last, and the final loss count.
    let mut out = stdout.lock();
    let lost = tracer.snapshot()?.counter(Counter::RingbufFull);
    if lost > lost_reported {
        report_lost(&args, lost - lost_reported, &mut out)?;
    }
    out.flush()?;
    eprintln!("memtrace trace: {shown} events shown, {lost} lost");
    Ok(())
}

fn report_lost(args: &TraceArgs, n: u64, out: &mut dyn Write) -> std::io::Result<()> {
    if args.json {
        writeln!(out, "{{\"lost\":{n}}}")
    } else {
        writeln!(out, "*** {n} events lost: the ring buffer was full")
    }
}

#[cfg(test)]
mod tests {
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
        let gfp =
            GfpTable::from_print_fmt(include_str!("../testdata/linux-6.18/kmem_kmalloc.format"))
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
        let r = record(&e, Some(&gfp), None, Some(&[0xffff_ffff_8100_0000]), &clock);
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
        print_human(&r, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("FAILURE") && text.contains("100/128 B"),
            "{text}"
        );
        assert!(!text.contains("ffff"));
    }
}
