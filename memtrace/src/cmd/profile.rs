//! `memtrace profile` (a heap profile of a time window, as pprof or folded stacks) and
//! `memtrace leaks` (stacks whose live bytes grow steadily), with the heap-profiling flags
//! the daemon shares.

use std::{io::Write, time::Duration};

use anyhow::{Context as _, bail};

use super::units::{fmt_bytes, fmt_bytes_rate, parse_seconds};
use crate::{
    bpf::{AttachPreference, Tracer, TracerOptions},
    export::scrape,
    label::symbolize::Symbolizer,
    profile::{
        self, LEAKS_PATH, ProfileArgs, folded,
        live::{Profiler, Suspect},
        pprof,
        report::Value,
    },
};

/// The output format of `memtrace profile`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Gzipped pprof `profile.proto`, for `go tool pprof`, Parca, Pyroscope.
    Pprof,
    /// Collapsed stacks (`frame;frame;... value`), for flame-graph tools.
    Folded,
}

/// Flags of `memtrace profile`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProfileCmdArgs {
    /// Seconds to profile (Ctrl-C ends early and still writes the profile).
    #[arg(long, default_value_t = 30.0, value_parser = parse_seconds, value_name = "SECONDS")]
    pub duration: f64,
    /// Where to write the profile; `-` is standard output.
    #[arg(short, long, default_value = "-", value_name = "FILE")]
    pub output: String,
    #[arg(long, value_enum, default_value_t = Format::Pprof)]
    pub format: Format,
    /// The value folded stacks carry (pprof files carry all four).
    #[arg(long, value_enum, default_value_t = Value::InuseSpace)]
    pub value: Value,
    /// Only this process's allocations (thread-group id); filtered in the kernel.
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Option<u32>,
    /// How to attach probes.
    #[arg(long, value_enum, default_value_t = AttachPreference::Auto)]
    pub attach: AttachPreference,
    #[command(flatten)]
    pub profile: ProfileArgs,
}

/// Flags of `memtrace leaks`.
#[derive(Debug, Clone, clap::Args)]
pub struct LeaksArgs {
    /// Ask a running daemon (started with --profile.enabled true) instead of profiling here:
    /// its base URL, e.g. http://localhost:9701.
    #[arg(long, value_name = "URL")]
    pub from: Option<String>,
    /// Seconds to watch when profiling here.
    #[arg(long, default_value_t = 60.0, value_parser = parse_seconds, value_name = "SECONDS")]
    pub duration: f64,
    /// Seconds between two points of each stack's live bytes, when profiling here.
    #[arg(long, default_value_t = 5.0, value_parser = parse_seconds, value_name = "SECONDS")]
    pub interval: f64,
    /// Only this process's allocations (thread-group id), when profiling here.
    #[arg(long, value_name = "PID", value_parser = clap::value_parser!(u32).range(1..))]
    pub pid: Option<u32>,
    /// Print the suspects as JSON.
    #[arg(long)]
    pub json: bool,
    /// How to attach probes.
    #[arg(long, value_enum, default_value_t = AttachPreference::Auto)]
    pub attach: AttachPreference,
    #[command(flatten)]
    pub profile: ProfileArgs,
}

/// Programs attached with profiling on, their ring buffer and the profiler it feeds.
struct Session {
    tracer: Tracer,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    profiler: Profiler,
    symbols: Option<Symbolizer>,
}

impl Session {
    fn start(
        args: &ProfileArgs,
        pid: Option<u32>,
        attach: AttachPreference,
        window: usize,
    ) -> anyhow::Result<Session> {
        let mut tracer = Tracer::start(&TracerOptions {
            attach,
            filter_tgid: pid.unwrap_or(0),
            profile: Some(args.tracer_options()),
            ..Default::default()
        })?;
        let ring = tracer.take_profile_events()?;
        let profiler = args
            .profiler(&tracer, window)
            .context("the programs were loaded without profiling")?;
        let symbols = match Symbolizer::load() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!("stacks cannot be symbolized ({e}); frames read \"unknown\"");
                None
            }
        };
        Ok(Session {
            tracer,
            ring,
            profiler,
            symbols,
        })
    }

    /// Reads the ring buffer until `secs` have passed (or Ctrl-C), ticking every `tick`
    /// seconds.
    async fn run(&mut self, secs: f64, tick: Option<f64>) {
        let end = tokio::time::Instant::now() + Duration::from_secs_f64(secs);
        let mut next_tick = tick.map(|t| tokio::time::Instant::now() + Duration::from_secs_f64(t));
        let ctrl_c = tokio::signal::ctrl_c();
        tokio::pin!(ctrl_c);
        loop {
            profile::drain_into(&mut self.ring, &mut self.profiler);
            let now = tokio::time::Instant::now();
            if let (Some(t), Some(at)) = (tick, next_tick) {
                if now >= at {
                    let old = self.profiler.tick(profile::monotonic_ns());
                    if let Err(e) = self.tracer.forget_live(&old) {
                        tracing::warn!("removing aged-out samples failed: {e:#}");
                    }
                    next_tick = Some(at + Duration::from_secs_f64(t));
                }
            }
            if now >= end {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = &mut ctrl_c => break,
            }
        }
        profile::drain_into(&mut self.ring, &mut self.profiler);
    }
}

/// `memtrace profile`.
pub async fn run_profile(args: ProfileCmdArgs) -> anyhow::Result<()> {
    if args.output == "-"
        && args.format == Format::Pprof
        && std::io::IsTerminal::is_terminal(&std::io::stdout())
    {
        bail!("a pprof profile is binary: write it with -o FILE, or pipe it");
    }
    // An unwritable output is reported before anything is loaded into the kernel. The
    // profile goes to a temporary file beside it, renamed at the end: a run that fails
    // leaves an earlier file as it was.
    let partial = format!("{}.partial", args.output);
    let mut out: Box<dyn Write> = if args.output == "-" {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(
            std::fs::File::create(&partial).with_context(|| format!("cannot create {partial}"))?,
        )
    };
    let cleanup = |e: anyhow::Error| {
        if args.output != "-" {
            let _ = std::fs::remove_file(&partial);
        }
        e
    };
    let mut s = Session::start(&args.profile, args.pid, args.attach, 2).map_err(cleanup)?;
    let started = std::time::SystemTime::now();
    eprintln!(
        "memtrace: profiling kernel allocations for {} s (one sample per {} bytes on average)",
        args.duration, args.profile.sample_bytes
    );
    s.run(args.duration, None).await;
    let report = profile::report_since(&s.profiler, s.symbols.as_ref(), started);
    let written = match args.format {
        Format::Pprof => out.write_all(&pprof::encode(&report)),
        Format::Folded => folded::write(&report, args.value, &mut out),
    }
    .and_then(|()| out.flush());
    drop(out);
    written
        .with_context(|| format!("cannot write {}", args.output))
        .map_err(cleanup)?;
    if args.output != "-" {
        std::fs::rename(&partial, &args.output)
            .with_context(|| format!("cannot write {}", args.output))
            .map_err(cleanup)?;
    }
    let samples: u64 = s.profiler.samples().values().sum();
    eprintln!(
        "memtrace: {samples} samples, {} still live, {} stacks{}",
        s.profiler.live_samples(),
        s.profiler.stacks(),
        if args.output == "-" {
            String::new()
        } else {
            format!("; written to {}", args.output)
        }
    );
    Ok(())
}

/// `memtrace leaks`.
pub async fn run_leaks(args: LeaksArgs, out: &mut dyn Write) -> anyhow::Result<()> {
    let (suspects, window) = match &args.from {
        Some(url) => {
            let url = format!("{}{}", url.trim_end_matches('/'), LEAKS_PATH);
            let (code, body) = tokio::task::spawn_blocking({
                let url = url.clone();
                move || scrape::get_response(&url, Duration::from_secs(5))
            })
            .await?
            .with_context(|| format!("no memtrace daemon answered at {url}"))?;
            if code == 404 {
                bail!("the daemon at {url} does not profile: start it with --profile.enabled true");
            }
            if code != 200 {
                bail!("{url} answered HTTP {code}");
            }
            let suspects: Vec<Suspect> = serde_json::from_str(&body).with_context(|| {
                format!("{url} did not answer with leak suspects (is profiling on?)")
            })?;
            (suspects, None)
        }
        None => {
            if args.interval * 3.0 > args.duration {
                bail!("--duration must cover at least three --interval steps");
            }
            let points = (args.duration / args.interval).ceil() as usize + 1;
            let mut s = Session::start(&args.profile, args.pid, args.attach, points)?;
            eprintln!(
                "memtrace: watching live kernel allocations for {} s, every {} s",
                args.duration, args.interval
            );
            s.profiler.tick(profile::monotonic_ns());
            s.run(args.duration, Some(args.interval)).await;
            s.profiler.tick(profile::monotonic_ns());
            let suspects = s
                .profiler
                .suspects(s.symbols.as_ref(), profile::monotonic_ns());
            (suspects, Some(args.duration))
        }
    };
    if args.json {
        serde_json::to_writer_pretty(&mut *out, &suspects)?;
        writeln!(out)?;
    } else {
        print_suspects(&suspects, window, out)?;
    }
    Ok(())
}

/// The suspects as a table, fastest-growing first, with each one's innermost frames.
pub fn print_suspects(
    suspects: &[Suspect],
    window: Option<f64>,
    out: &mut dyn Write,
) -> std::io::Result<()> {
    if suspects.is_empty() {
        let over = window.map_or(String::new(), |w| format!(" over {w} s"));
        return writeln!(out, "no stack's live bytes grew steadily{over}");
    }
    writeln!(
        out,
        "{:<10} {:<32} {:>10} {:>12} {:>9} {:>10} {:>8}",
        "allocator", "function", "live", "growth/s", "window", "oldest", "samples"
    )?;
    for s in suspects {
        writeln!(
            out,
            "{:<10} {:<32} {:>10} {:>12} {:>8.0}s {:>9.0}s {:>8}",
            s.allocator,
            s.function,
            fmt_bytes(s.live_bytes),
            fmt_bytes_rate(s.growth_bytes_per_second),
            s.window_seconds,
            s.oldest_age_seconds,
            s.live_samples
        )?;
        let frames: Vec<&str> = s.frames.iter().map(String::as_str).take(8).collect();
        writeln!(out, "           {}", frames.join(" < "))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspects_print_as_a_table_without_addresses() {
        let s = Suspect {
            allocator: "kmalloc".into(),
            function: "simple_xattr_alloc".into(),
            frames: vec!["__kmalloc_noprof".into(), "simple_xattr_alloc".into()],
            live_bytes: 8.0 * 1024.0 * 1024.0,
            live_objects: 2048.0,
            growth_bytes_per_second: 65536.0,
            growth_bytes: 4.0 * 1024.0 * 1024.0,
            window_seconds: 60.0,
            oldest_age_seconds: 75.0,
            live_samples: 300,
        };
        let mut out = Vec::new();
        print_suspects(&[s], Some(60.0), &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("simple_xattr_alloc"), "{text}");
        assert!(
            text.contains("__kmalloc_noprof < simple_xattr_alloc"),
            "{text}"
        );
        assert!(!text.contains("0xffff"));
        assert!(
            text.contains("8.0 MiB") && text.contains("64.0 KiB/s"),
            "{text}"
        );
        let mut out = Vec::new();
        print_suspects(&[], Some(60.0), &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "no stack's live bytes grew steadily over 60 s\n"
        );
    }
}
