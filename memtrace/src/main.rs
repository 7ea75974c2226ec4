use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Watch the Linux kernel's memory allocators live: kmalloc, slab caches, the page
/// allocator, vmalloc and percpu.
#[derive(Debug, Parser)]
#[command(name = "memtrace", version, about, long_about = None)]
struct Cli {
    /// Log format on standard error: `text`, or `json` (one object per line, for journald
    /// and log shippers).
    #[arg(
        long = "log-format",
        global = true,
        env = "MEMTRACE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Preflight: report, per probe, what this kernel offers, and whether memtrace can run.
    Check {
        /// Print the report as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Attach the probes and serve Prometheus metrics until SIGINT or SIGTERM.
    Daemon(memtrace::cmd::daemon::DaemonArgs),
    /// A live terminal view of kernel allocation: rates per allocator, call sites, slab
    /// caches, processes, page orders and vmalloc, with the latest failures.
    Top(memtrace::cmd::top::TopArgs),
    /// Stream notable allocation events: failures, large kmalloc/vmalloc, high-order pages.
    Trace(memtrace::cmd::trace::TraceArgs),
    /// How large an allocation can succeed right now: page allocator orders, free
    /// contiguous blocks per zone, kmalloc and vmalloc bounds, CMA and huge pages, and what a
    /// running daemon has observed.
    Limits(memtrace::cmd::limits::LimitsArgs),
    /// A kernel heap profile of a time window: sampled allocations with their kernel
    /// stacks, allocated and still live, as gzipped pprof (go tool pprof, Parca, Pyroscope)
    /// or folded stacks (flame graphs).
    Profile(memtrace::cmd::profile::ProfileCmdArgs),
    /// Kernel stacks whose live (allocated, not freed) bytes grow steadily, with the age of
    /// their oldest live allocation: watched here, or asked of a running daemon.
    Leaks(memtrace::cmd::profile::LeaksArgs),
}

/// Parses the command line. For `memtrace daemon` with `--config FILE` (or
/// MEMTRACE_CONFIG), the file is applied and the command line parsed again, so that file
/// values are validated like flags and flags and environment variables win. clap finds the
/// subcommand and the flag wherever they are (`memtrace --log-format json daemon --config F`).
fn parse_cli() -> Result<Cli, ExitCode> {
    let cli = try_parse()?;
    let Command::Daemon(daemon) = &cli.command else {
        return Ok(cli);
    };
    let Some(path) = daemon.config.clone() else {
        return Ok(cli);
    };
    let cmd = <Cli as clap::CommandFactory>::command();
    let daemon = cmd
        .find_subcommand("daemon")
        .expect("the daemon subcommand exists");
    let known: Vec<memtrace::cmd::config::Known> = daemon
        .get_arguments()
        .filter(|a| a.get_id() != "config")
        .filter_map(|a| {
            Some(memtrace::cmd::config::Known {
                key: a.get_long()?.to_string(),
                env: a.get_env()?.to_string_lossy().into_owned(),
            })
        })
        .collect();
    if let Err(e) = memtrace::cmd::config::apply(&path, &known) {
        eprintln!("memtrace: {e}");
        return Err(ExitCode::from(2));
    }
    try_parse()
}

/// clap's parse, with its errors as one line and exit code 2.
fn try_parse() -> Result<Cli, ExitCode> {
    Cli::try_parse().map_err(|e| {
        use clap::error::ErrorKind;
        if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
            let _ = e.print();
            return ExitCode::from(2);
        }
        // One clear line instead of clap's multi-line usage dump.
        let text = e.render().to_string();
        let first = text.lines().next().unwrap_or("invalid arguments");
        let first = first.trim_start_matches("error: ");
        eprintln!("memtrace: {first} (see `memtrace --help`)");
        ExitCode::from(2)
    })
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(memtrace::cmd::top::log_writer);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("memtrace: {}", memtrace::sync::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { json } => {
            let report = memtrace::cmd::check::run();
            let mut out = std::io::stdout().lock();
            if json {
                serde_json::to_writer_pretty(&mut out, &report)?;
                use std::io::Write;
                writeln!(out)?;
            } else {
                memtrace::cmd::check::print_human(&report, &mut out)?;
            }
            Ok(if report.can_run {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Limits(args) => {
            memtrace::cmd::limits::run(&args, &mut std::io::stdout().lock())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Top(args) => {
            memtrace::cmd::top::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Trace(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(memtrace::cmd::trace::run(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Profile(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(memtrace::cmd::profile::run_profile(args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Leaks(args) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(memtrace::cmd::profile::run_leaks(
                args,
                &mut std::io::stdout().lock(),
            ))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Daemon(args) => {
            // Attach and drop privileges first, while this is the only thread: the runtime's
            // threads then start with the reduced capabilities.
            let started = memtrace::cmd::daemon::start(args)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            let served = rt.block_on(memtrace::cmd::daemon::serve(started));
            // A blocking job stuck in the kernel must not hold the exit: wait for it, but
            // only so long; the process's exit closes whatever it still holds.
            rt.shutdown_timeout(std::time::Duration::from_secs(5));
            served?;
            tracing::info!("stopped; programs detached");
            Ok(ExitCode::SUCCESS)
        }
    }
}
