//! `memtrace daemon`: attach the probes and serve Prometheus metrics until SIGINT/SIGTERM.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, RingBuf};
use memtrace_common::{Allocator, NotableEvent};

use anyhow::anyhow;
use axum::{
    Router,
    extract::State,
    http::{StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::get,
};
use prometheus::{Encoder as _, Registry, TextEncoder};

use crate::{
    bpf::{
        AttachPreference, Tracer, TracerOptions,
        events::{self, Kind},
    },
    cmd::serial::{JobError, Serial},
    export::{
        self, Exporter, LabelLimits,
        collect::{self, Collection, Health},
        record::{Clock, SeqRecord},
    },
    kernel::{self, caps},
    profile::{HEAP_PATH, LEAKS_PATH, ProfileArgs, live::Profiler},
};

/// Flags of `memtrace daemon`; each has an environment-variable equivalent and a key in the
/// configuration file.
#[derive(Debug, Clone, clap::Args)]
pub struct DaemonArgs {
    /// TOML configuration file whose keys are these flags' names (`[web] listen-address =
    /// "…"`); flags and environment variables override it.
    #[arg(long, env = "MEMTRACE_CONFIG", value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Address and port to serve metrics on.
    #[arg(
        long = "web.listen-address",
        env = "MEMTRACE_WEB_LISTEN_ADDRESS",
        default_value = "0.0.0.0:9701",
        value_name = "ADDR:PORT"
    )]
    pub listen_address: SocketAddr,
    /// Path under which metrics are served.
    #[arg(
        long = "web.telemetry-path",
        env = "MEMTRACE_WEB_TELEMETRY_PATH",
        default_value = "/metrics",
        value_parser = parse_telemetry_path,
        value_name = "PATH"
    )]
    pub telemetry_path: String,
    /// How to attach probes: tp_btf where possible (auto), or only one kind.
    #[arg(long, env = "MEMTRACE_ATTACH", value_enum, default_value_t = AttachPreference::Auto)]
    pub attach: AttachPreference,
    /// Most slab caches exported with their own `cache` label; the rest count in `other`.
    #[arg(
        long = "caches.max",
        env = "MEMTRACE_CACHES_MAX",
        default_value_t = 50,
        value_parser = clap::value_parser!(u32).range(1..=10_000),
        value_name = "N"
    )]
    pub caches_max: u32,
    /// Most calling functions exported per allocator with their own `function` label; the
    /// rest count in `function="other"`.
    #[arg(
        long = "callsites.max",
        env = "MEMTRACE_CALLSITES_MAX",
        default_value_t = 50,
        value_parser = clap::value_parser!(u32).range(1..=10_000),
        value_name = "N"
    )]
    pub callsites_max: u32,
    /// Most task names (comm) exported per allocator with their own `comm` label; the rest
    /// count in `comm="other"`.
    #[arg(
        long = "processes.max",
        env = "MEMTRACE_PROCESSES_MAX",
        default_value_t = 50,
        value_parser = clap::value_parser!(u32).range(1..=10_000),
        value_name = "N"
    )]
    pub processes_max: u32,
    /// Most memory cgroups exported per allocator with their own `cgroup` label (with
    /// --attribution.cgroups); the rest count in `cgroup="other"`.
    #[arg(
        long = "cgroups.max",
        env = "MEMTRACE_CGROUPS_MAX",
        default_value_t = 50,
        value_parser = clap::value_parser!(u32).range(1..=10_000),
        value_name = "N"
    )]
    pub cgroups_max: u32,
    /// kmalloc and vmalloc allocations of at least this many bytes are notable events
    /// (counted in memtrace_notable_events_total); 0 turns them off.
    #[arg(
        long = "events.min-bytes",
        env = "MEMTRACE_EVENTS_MIN_BYTES",
        default_value_t = 1 << 20,
        value_name = "BYTES"
    )]
    pub events_min_bytes: u64,
    /// Page allocations of at least this order are notable events.
    #[arg(
        long = "events.min-order",
        env = "MEMTRACE_EVENTS_MIN_ORDER",
        default_value_t = 4,
        value_parser = clap::value_parser!(u32).range(0..=64),
        value_name = "ORDER"
    )]
    pub events_min_order: u32,
    /// Count allocations per calling function (memtrace_callsite_*): one more per-CPU table
    /// update per kmalloc, kmem_cache and percpu allocation.
    #[arg(
        long = "attribution.callsites",
        env = "MEMTRACE_ATTRIBUTION_CALLSITES",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub attribution_callsites: bool,
    /// Count allocations per task name (memtrace_process_*): reading the task name and one
    /// more per-CPU table update per allocation.
    #[arg(
        long = "attribution.processes",
        env = "MEMTRACE_ATTRIBUTION_PROCESSES",
        default_value_t = true,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub attribution_processes: bool,
    /// Count allocations per memory cgroup (memtrace_cgroup_*): five pointer loads (task →
    /// css_set → memory css → cgroup → kernfs node → id) and one more per-CPU hash update
    /// per allocation. Off by default.
    #[arg(
        long = "attribution.cgroups",
        env = "MEMTRACE_ATTRIBUTION_CGROUPS",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub attribution_cgroups: bool,
    /// Also record the kernel stack of every notable event in the kernel (a stack walk per
    /// event). The daemon exports no stacks (`memtrace trace --stacks` prints them); this
    /// measures their cost with `cargo xtask bench`.
    #[arg(long = "events.stacks", env = "MEMTRACE_EVENTS_STACKS")]
    pub events_stacks: bool,
    /// Attach every probe but count nothing: the cost of the hooks alone. For benchmarks
    /// (`cargo xtask bench`); the metrics then stay at zero.
    #[arg(long = "probes.hooks-only", env = "MEMTRACE_PROBES_HOOKS_ONLY")]
    pub hooks_only: bool,
    /// Sample allocations for heap profiles (/debug/pprof/heap, /api/leaks,
    /// memtrace_live_bytes): per allocation a subtraction, per sampled one a stack walk; the
    /// other --profile.* flags tune it.
    #[arg(
        long = "profile.enabled",
        env = "MEMTRACE_PROFILE_ENABLED",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub profile_enabled: bool,
    #[command(flatten)]
    pub profile: ProfileArgs,
    /// Capabilities kept once the programs are attached: `needed` (CAP_SYSLOG, to name call
    /// sites from kallsyms after a module loads; CAP_DAC_READ_SEARCH too when not uid 0, for
    /// root-only /proc files), `all`, `none`, or a comma-separated list such as
    /// `cap_syslog,cap_bpf`.
    #[arg(
        long = "capabilities.keep",
        env = "MEMTRACE_CAPABILITIES_KEEP",
        default_value = "needed",
        value_parser = clap::value_parser!(caps::Keep),
        value_name = "CAPS"
    )]
    pub capabilities_keep: caps::Keep,
    #[command(flatten)]
    pub web: crate::web::WebArgs,
}

fn parse_telemetry_path(s: &str) -> Result<String, String> {
    if !s.starts_with('/') || s == "/" || s == "/healthz" || s.contains(char::is_whitespace) {
        return Err(format!(
            "{s:?} must be an absolute path other than / and /healthz, without spaces"
        ));
    }
    Ok(s.to_string())
}

struct AppState {
    /// The programs and the label state. Only jobs run through `jobs` take it (reading maps
    /// and /proc and symbolizing block: never on the runtime's workers). Taken before
    /// `profile` where both are.
    inner: Mutex<(Tracer, Exporter)>,
    /// Runs the handlers' blocking work on the blocking pool, one job at a time: a second
    /// concurrent scrape waits (asynchronously) for the first to finish and then collects
    /// afresh, so concurrent scrapes cost one blocking thread, and each scrape's figures are
    /// its own (see [`Serial`]).
    jobs: Serial,
    /// Each collector's state across scrapes: a failure is logged when it starts and ends.
    health: Mutex<Health>,
    /// Why the last profile tick could not remove aged-out samples from the kernel (`None`
    /// since one could): the `profile` collector is down meanwhile.
    tick_error: Mutex<Option<String>>,
    /// The heap profile, when on.
    profile: Option<Arc<Mutex<Profiler>>>,
    /// When the daemon started: the heap profile's start.
    started: std::time::SystemTime,
    notable: Arc<NotableCounts>,
    registry: Registry,
    kernel: String,
    telemetry_path: String,
    clock: Clock,
}

/// The daemon once its programs are attached and its privileges dropped: what
/// [`serve`] runs. Built by [`start`] on the main thread before the async runtime exists.
pub struct Started {
    args: DaemonArgs,
    listener: std::net::TcpListener,
    web: crate::web::Web,
    tracer: Tracer,
    exporter: Exporter,
    profile: Option<Profiler>,
    events: RingBuf<MapData>,
    profile_events: Option<RingBuf<MapData>>,
}

/// Binds the listener, loads and attaches the programs, reads what naming needs (GFP
/// names, kallsyms, cgroup paths), then drops the capabilities `--capabilities.keep` does
/// not keep. Must run before any other thread exists (capabilities are per thread).
pub fn start(args: DaemonArgs) -> anyhow::Result<Started> {
    // Bind first: an occupied port is reported before anything is loaded into the kernel.
    let listener = std::net::TcpListener::bind(args.listen_address)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| {
            anyhow!(
                "cannot listen on {}: {e}; choose another address with --web.listen-address",
                args.listen_address
            )
        })?;
    // The web config file too (a bad one is one line at start), before anything is loaded.
    let web = crate::web::Web::prepare(&args.web)?;

    // Per-cgroup counting needs the memory hierarchy to name cgroups: without one it is off.
    let cgroup_paths = if args.attribution_cgroups {
        match crate::label::cgroup::Resolver::from_system() {
            Ok((r, version)) => {
                tracing::info!(root = %r.root().display(), ?version, "memory cgroups named from");
                Some(r)
            }
            Err(e) => {
                tracing::warn!("per-cgroup counting is off: {e}");
                None
            }
        }
    } else {
        None
    };
    let mut tracer = Tracer::start(&TracerOptions {
        attach: args.attach,
        notable_min_bytes: args.events_min_bytes,
        notable_min_order: args.events_min_order,
        attribution: if args.attribution_callsites {
            memtrace_common::ATTR_CALLSITES
        } else {
            0
        } | if args.attribution_processes {
            memtrace_common::ATTR_COMMS
        } else {
            0
        } | if args.events_stacks {
            memtrace_common::ATTR_STACKS
        } else {
            0
        } | if cgroup_paths.is_some() {
            memtrace_common::ATTR_CGROUPS
        } else {
            0
        },
        hooks_only: args.hooks_only,
        profile: args.profile_enabled.then(|| args.profile.tracer_options()),
        ..Default::default()
    })?;
    let cgroup_paths = match (cgroup_paths, tracer.cgroups_unavailable()) {
        (Some(_), Some(why)) => {
            tracing::warn!("per-cgroup counting is off: {why}");
            None
        }
        (paths, _) => paths,
    };
    let events = tracer.take_events()?;
    let profile = args.profile.profiler(&tracer, LEAK_WINDOW);
    let profile_events = match &profile {
        Some(_) => {
            tracing::info!(
                sample_bytes = args.profile.sample_bytes,
                max_live = args.profile.max_live,
                "heap profiling on"
            );
            Some(tracer.take_profile_events()?)
        }
        None => None,
    };
    for p in tracer.probes() {
        match (&p.mode, &p.note) {
            (Some(mode), _) => tracing::info!(
                probe = %p.probe,
                %mode,
                program = p.program.unwrap_or(""),
                "probe attached"
            ),
            (None, note) => tracing::warn!(
                probe = %p.probe,
                reason = note.as_deref().unwrap_or("unknown"),
                "probe not attached; its metrics stay empty"
            ),
        }
    }
    let exporter = Exporter::for_running_kernel(
        tracer.migratetypes().clone(),
        LabelLimits {
            caches: args.caches_max as usize,
            callsites: args.callsites_max as usize,
            processes: args.processes_max as usize,
            cgroups: args.cgroups_max as usize,
        },
    );
    let exporter = match cgroup_paths {
        Some(r) => exporter.with_cgroup_paths(r),
        None => exporter,
    };

    // Everything privileged is done: the programs are attached and their maps open.
    let dropped = caps::drop_to(&args.capabilities_keep)?;
    if let Some(c) = &dropped.kept_for_maps {
        tracing::info!(
            capability = %c,
            "kept: this kernel refuses bpf() map reads without it (kernel.unprivileged_bpf_disabled)"
        );
    }
    if !dropped.not_held.is_empty() {
        tracing::warn!(
            capabilities = %dropped.not_held.join(","),
            "--capabilities.keep names capabilities this process does not hold"
        );
    }
    if args.capabilities_keep == caps::Keep::All {
        tracing::info!("capabilities kept (--capabilities.keep all)");
    } else {
        tracing::info!(
            kept = %if dropped.kept.is_empty() { "none".to_string() } else { dropped.kept.join(",") },
            dropped = dropped.dropped,
            "capabilities dropped after attach"
        );
    }
    // The web config and the files it names are read again on every change, from now on
    // with the reduced capabilities: read them so once now, so that a file only a dropped
    // capability could read is an error at start, not a reload that fails later.
    let web = if args.web.config_file.is_some() {
        crate::web::Web::prepare(&args.web).map_err(|e| {
            anyhow!(
                "{} once capabilities are dropped; make the files readable by the daemon's \
                 user, or keep cap_dac_read_search with --capabilities.keep",
                crate::sync::one_line(e.as_ref())
            )
        })?
    } else {
        web
    };
    Ok(Started {
        args,
        listener,
        web,
        tracer,
        exporter,
        profile,
        events,
        profile_events,
    })
}

/// Serves metrics until SIGINT or SIGTERM; returns once programs are detached.
pub async fn serve(started: Started) -> anyhow::Result<()> {
    let Started {
        args,
        listener,
        web,
        tracer,
        exporter,
        profile,
        events,
        profile_events,
    } = started;
    let listener = tokio::net::TcpListener::from_std(listener)
        .map_err(|e| anyhow!("cannot serve on {}: {e}", args.listen_address))?;
    let notable = Arc::new(NotableCounts::default());
    let drain = tokio::spawn(drain_events(events, notable.clone()));
    let profile = profile.map(|p| Arc::new(Mutex::new(p)));
    let profile_drain = match (&profile, profile_events) {
        (Some(p), Some(ring)) => Some(tokio::spawn(crate::profile::drain(ring, p.clone()))),
        _ => None,
    };

    let registry = Registry::new();
    registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    ))?;
    let kernel = kernel::release();
    let state = Arc::new(AppState {
        inner: Mutex::new((tracer, exporter)),
        jobs: Serial::default(),
        health: Mutex::default(),
        tick_error: Mutex::default(),
        profile,
        started: std::time::SystemTime::now(),
        notable,
        registry,
        kernel,
        telemetry_path: args.telemetry_path.clone(),
        clock: Clock::now(),
    });
    let app = Router::new()
        .route("/", get(landing))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(&args.telemetry_path, get(serve_metrics))
        .route(export::record::FAILURES_PATH, get(serve_failures))
        .route(HEAP_PATH, get(serve_heap))
        .route(LEAKS_PATH, get(serve_leaks))
        .with_state(state.clone());
    let ticks = state
        .profile
        .is_some()
        .then(|| tokio::spawn(tick(state.clone())));

    tracing::info!(
        address = %args.listen_address,
        path = %args.telemetry_path,
        "serving metrics"
    );
    crate::web::serve(listener, app, web, shutdown_signal()).await?;
    drain.abort();
    for t in [profile_drain, ticks].into_iter().flatten() {
        t.abort();
    }
    // Detaches every program, unless a blocking job still holds the state: then the runtime's
    // shutdown (bounded, in main) ends it, or the process's exit does.
    drop(state);
    Ok(())
}

/// Seconds between two points of each stack's live-bytes window.
const TICK_SECONDS: u64 = 10;
/// Points of each stack's live-bytes window: ten minutes.
const LEAK_WINDOW: usize = 60;

/// How long a request waits for its turn at the shared state (see [`Serial`]) before it is
/// answered without it: well under Prometheus' default scrape timeout (10 s).
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

use crate::sync::lock;

/// Every tick: each stack's live bytes into its window, and the aged-out samples out of the
/// kernel's live map (a blocking job: it deletes map entries). A tick whose turn does not
/// come is skipped: the next one does its work.
async fn tick(state: Arc<AppState>) {
    if state.profile.is_none() {
        return;
    }
    let mut every = tokio::time::interval(std::time::Duration::from_secs(TICK_SECONDS));
    loop {
        every.tick().await;
        let job = state.clone();
        let done = state
            .jobs
            .run(TURN_WAIT, move || {
                let Some(profile) = &job.profile else {
                    return;
                };
                let old = lock(profile).tick(crate::profile::monotonic_ns());
                if old.is_empty() {
                    return;
                }
                let result = lock(&job.inner).0.forget_live(&old);
                *lock(&job.tick_error) = result.err().map(|e| {
                    format!(
                        "removing aged-out samples from the kernel failed: {}",
                        crate::sync::one_line(e.as_ref())
                    )
                });
            })
            .await;
        if let Err(e) = done {
            tracing::debug!("profile tick skipped: {e}");
        }
    }
}

/// The reply to a heap-profile request when profiling is off.
fn profiling_off() -> Response {
    (
        StatusCode::NOT_FOUND,
        "heap profiling is off: start the daemon with --profile.enabled true\n",
    )
        .into_response()
}

/// The reply to a request whose blocking job did not run.
fn unavailable(e: &JobError) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response()
}

async fn serve_heap(State(state): State<Arc<AppState>>) -> Response {
    if state.profile.is_none() {
        return profiling_off();
    }
    let job = state.clone();
    let report = state
        .jobs
        .run(TURN_WAIT, move || {
            let profile = job.profile.as_ref()?;
            let inner = lock(&job.inner);
            let p = lock(profile);
            Some(crate::profile::report_since(
                &p,
                inner.1.symbols(),
                job.started,
            ))
        })
        .await;
    match report {
        Ok(Some(report)) => (
            [
                (header::CONTENT_TYPE, "application/octet-stream"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"heap\""),
            ],
            crate::profile::pprof::encode(&report),
        )
            .into_response(),
        Ok(None) => profiling_off(),
        Err(e) => unavailable(&e),
    }
}

async fn serve_leaks(State(state): State<Arc<AppState>>) -> Response {
    if state.profile.is_none() {
        return profiling_off();
    }
    let job = state.clone();
    let suspects = state
        .jobs
        .run(TURN_WAIT, move || {
            let profile = job.profile.as_ref()?;
            let inner = lock(&job.inner);
            let p = lock(profile);
            Some(p.suspects(inner.1.symbols(), crate::profile::monotonic_ns()))
        })
        .await;
    match suspects {
        Ok(Some(s)) => json(&s),
        Ok(None) => profiling_off(),
        Err(e) => unavailable(&e),
    }
}

/// `value` as a JSON response (a 500 with the reason if it cannot be encoded).
fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding failed: {e}\n"),
        )
            .into_response(),
    }
}

/// Failures kept for [`FAILURES_PATH`](crate::export::record::FAILURES_PATH).
const RECENT_FAILURES: usize = 256;

/// Notable events read from the ring buffer, by allocator and kind, and the latest failures
/// (raw: symbolized when served), each with a sequence number.
#[derive(Default)]
struct NotableCounts {
    counts: Mutex<BTreeMap<(Allocator, Kind), u64>>,
    recent: Mutex<(u64, VecDeque<(u64, NotableEvent)>)>,
    /// Why the drain of the ring buffer stopped (`None` while it runs): the `notable`
    /// collector is down from then on.
    stopped: Mutex<Option<String>>,
}

impl NotableCounts {
    /// The `notable` collector: the counts, while the drain runs.
    fn collect(&self, out: &mut Vec<prometheus::proto::MetricFamily>) -> Result<(), String> {
        if let Some(why) = &*lock(&self.stopped) {
            return Err(format!(
                "the notable-event ring buffer is no longer read: {why}"
            ));
        }
        out.push(self.family());
        Ok(())
    }

    fn family(&self) -> prometheus::proto::MetricFamily {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut all = Vec::new();
        for a in Allocator::ALL {
            for k in [Kind::Failure, Kind::Large] {
                let n = counts.get(&(a, k)).copied().unwrap_or(0);
                all.push(((a.name(), k.name()), n));
            }
        }
        export::notable_family(&all)
    }
}

/// Drains the notable-event ring buffer whenever the kernel signals it. If polling fails it
/// stops, and says why in [`NotableCounts::stopped`] (the `notable` collector reports it).
async fn drain_events(ring: RingBuf<MapData>, counts: Arc<NotableCounts>) {
    let why = drain_events_until_error(ring, &counts).await;
    *lock(&counts.stopped) = Some(why);
}

/// [`drain_events`] until polling fails: why.
async fn drain_events_until_error(ring: RingBuf<MapData>, counts: &NotableCounts) -> String {
    let mut fd = match events::poll(ring) {
        Ok(fd) => fd,
        Err(e) => return e.to_string(),
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => return format!("polling the events ring buffer failed: {e}"),
        };
        let mut local = Vec::new();
        events::drain(guard.get_inner_mut(), |e| local.push(e));
        guard.clear_ready();
        let mut c = counts.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut recent = counts.recent.lock().unwrap_or_else(|p| p.into_inner());
        for e in local {
            if let Some(a) = events::allocator(&e) {
                *c.entry((a, Kind::of(&e))).or_default() += 1;
            }
            if Kind::of(&e) == Kind::Failure {
                let (next, list) = &mut *recent;
                *next += 1;
                if list.len() == RECENT_FAILURES {
                    list.pop_front();
                }
                list.push_back((*next, e));
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot watch SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    // A second SIGINT or SIGTERM while the server drains stops the process at once: the
    // kernel detaches the programs as it closes their descriptors.
    // SAFETY: resetting two signals to their default action touches no memory.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

async fn landing(State(state): State<Arc<AppState>>) -> Html<String> {
    let path = &state.telemetry_path;
    Html(format!(
        "<!doctype html><html><head><title>memtrace</title></head><body>\
         <h1>memtrace</h1><p>Kernel memory allocator metrics for Linux {}.</p>\
         <ul><li><a href=\"{path}\">{path}</a>: Prometheus metrics</li>\
         <li><a href=\"/healthz\">/healthz</a>: health</li>\
         <li><a href=\"{HEAP_PATH}\">{HEAP_PATH}</a>: kernel heap profile (pprof{})</li>\
         <li><a href=\"{LEAKS_PATH}\">{LEAKS_PATH}</a>: leak suspects (JSON)</li></ul></body></html>",
        state.kernel,
        if state.profile.is_some() {
            ""
        } else {
            "; off: start with --profile.enabled true"
        }
    ))
}

async fn serve_failures(State(state): State<Arc<AppState>>) -> Response {
    let raw: Vec<(u64, NotableEvent)> = lock(&state.notable.recent).1.iter().cloned().collect();
    let job = state.clone();
    let records = state
        .jobs
        .run(TURN_WAIT, move || {
            let mut inner = lock(&job.inner);
            let exporter = &mut inner.1;
            raw.iter()
                .map(|(seq, e)| SeqRecord {
                    seq: *seq,
                    record: exporter.record(e, &job.clock),
                })
                .collect::<Vec<_>>()
        })
        .await;
    match records {
        Ok(r) => json(&r),
        Err(e) => unavailable(&e),
    }
}

/// Every family of one scrape, from every collector (a blocking job: see [`AppState::jobs`]).
fn collect_all(state: &AppState) -> Vec<prometheus::proto::MetricFamily> {
    let mut c = Collection::new();
    {
        let mut inner = lock(&state.inner);
        let (tracer, exporter) = &mut *inner;
        let profile = state.profile.as_deref().map(|p| {
            let health = match (&lock(p).drain_stopped, &*lock(&state.tick_error)) {
                (Some(why), _) => Err(format!("the profile ring buffer is no longer read: {why}")),
                (None, Some(why)) => Err(why.clone()),
                (None, None) => Ok(()),
            };
            (p, health)
        });
        collect::kernel(
            &mut c,
            collect::Kernel {
                tracer,
                exporter,
                profile,
            },
        );
    }
    c.run(collect::NOTABLE, |out| state.notable.collect(out));
    c.extend(state.registry.gather());
    c.finish(&mut lock(&state.health))
}

/// The collectors a scrape would have run, each down for `why` (its turn did not come).
fn collectors_down(state: &AppState, why: &JobError) -> Vec<prometheus::proto::MetricFamily> {
    let mut c = Collection::new();
    let mut names = vec![collect::SYMBOLIZER, collect::MAPS, collect::LIMITS];
    if state.profile.is_some() {
        names.push(collect::PROFILE);
    }
    names.push(collect::NOTABLE);
    for name in names {
        c.run(name, |_| Err(why.to_string()));
    }
    c.finish(&mut lock(&state.health))
}

/// /metrics: always 200 while the process lives. A collector that fails is left out (and
/// says so in `memtrace_collector_up`); a scrape whose turn does not come in [`TURN_WAIT`]
/// answers with every collector down.
async fn serve_metrics(State(state): State<Arc<AppState>>) -> Response {
    let job = state.clone();
    let families = match state.jobs.run(TURN_WAIT, move || collect_all(&job)).await {
        Ok(f) => f,
        Err(e) => collectors_down(&state, &e),
    };
    let encoder = TextEncoder::new();
    let mut buf = Vec::new();
    if let Err(e) = encoder.encode(&families, &mut buf) {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding failed: {e}\n"),
        )
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, encoder.format_type().to_string())],
        buf,
    )
        .into_response()
}
