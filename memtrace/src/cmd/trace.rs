//! `memtrace trace`: stream notable allocation events as they happen — every failure, and
//! kmalloc/vmalloc at or above `--min-size`, page allocations at or above `--min-order` —
//! with time, CPU, pid, comm, allocator, sizes or order, decoded GFP flags, the call site
//! (`symbol+0xoff`) and, with `--stacks`, the symbolized kernel stack. No kernel address is
//! ever printed.

use std::{io::Write, time::Duration};

use anyhow::Context as _;
use memtrace_common::{ATTR_STACKS, Allocator, Counter, EVENT_FAILED, NotableEvent};

use crate::{
    bpf::{AttachPreference, Tracer, TracerOptions, events},
    export::record::{Clock, EventRecord},
    label::{gfp::GfpTable, symbolize::Symbolizer},
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
    #[arg(long, value_name = "SECONDS", value_parser = super::units::parse_seconds)]
    pub duration: Option<f64>,
    /// How to attach probes.
    #[arg(long, value_enum, default_value_t = AttachPreference::Auto)]
    pub attach: AttachPreference,
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

/// Prints one record as a human-readable line (plus indented stack frames).
pub fn print_human(r: &EventRecord, out: &mut dyn Write) -> std::io::Result<()> {
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
                    let r = EventRecord::new(&e, gfp.as_ref(), symbols.as_ref(), stack.as_deref(), &clock);
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
