//! `cargo xtask bench`: memtrace's overhead, measured against a baseline in the same run.
//!
//! Seven configurations run interleaved (the order rotates every repetition, so machine drift
//! cancels): no tracing; the floor (memtrace's programs on the same tracepoints, returning
//! at once: `--probes.hooks-only`); `memtrace daemon` with defaults; memtrace with everything
//! on (stacks, notable events down to 4 KiB and order 0, wide attribution); memtrace with heap
//! profiling on at the default sampling rate; bpftrace doing memtrace's default aggregation
//! with hist()/count() on the same tracepoints; and bpftrace doing full tracking of live
//! allocations like bcc's memleak (a hash insert with the kernel stack per allocation, a
//! delete per free), the heap profile's peer. Each run drives the `workload` binary for a
//! fixed time; medians and min–max are reported. Results go to `BENCHMARKS.md` and
//! `target/bench/bench.json`. Nothing here asserts a time.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

const CONFIGS: [&str; 7] = [
    "none",
    "floor",
    "memtrace",
    "memtrace-full",
    PROFILE,
    "bpftrace",
    MEMLEAK,
];

/// memtrace with heap profiling on (`--profile.enabled true`) at the default sampling rate.
const PROFILE: &str = "memtrace-profile";

/// The heap profile's peer: bpftrace tracking every live allocation ([`memleak_script`]).
const MEMLEAK: &str = "bpftrace-memleak";

/// Entries of each of [`memleak_script`]'s hash maps (`BPFTRACE_MAP_KEYS_MAX`; bpftrace
/// 0.17's default, 4096, would silently stop inserting within a second). bcc's memleak
/// sizes its `allocs` hash at 1000000.
const MEMLEAK_MAP_KEYS: u32 = 1 << 20;

/// The configuration of `--baseline-binary`: that binary's daemon with defaults.
const BASELINE: &str = "memtrace-baseline";

/// Profiling runs per configuration (floor, memtrace, memtrace-profile and the baseline
/// alternate): each program's ns per run is the median over them.
const PROFILE_REPS: usize = 3;

/// bpftrace's equivalent of memtrace's default aggregation, on the same tracepoints.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:kmem:kmalloc { @kmalloc[args->gfp_flags] = hist(args->bytes_alloc); @kreq[args->gfp_flags] = sum(args->bytes_req); @site[args->call_site] = sum(args->bytes_alloc); @comm[comm] = count(); }
tracepoint:kmem:kfree { @kfree = count(); }
tracepoint:kmem:kmem_cache_alloc { @cache[args->name] = sum(args->bytes_alloc); @csite[args->call_site] = count(); @comm[comm] = count(); }
tracepoint:kmem:kmem_cache_free { @cfree = count(); }
tracepoint:kmem:mm_page_alloc { @pages[args->order, args->migratetype, args->gfp_flags] = count(); @comm[comm] = count(); }
tracepoint:kmem:mm_page_free { @pfree[args->order] = count(); }
tracepoint:kmem:mm_page_free_batched { @pfree[0] = count(); }
tracepoint:kmem:mm_page_alloc_extfrag { @extfrag[args->fallback_order] = count(); }
tracepoint:vmalloc:alloc_vmap_area { @vmalloc = hist(args->size); }
tracepoint:vmalloc:purge_vmap_area_lazy { @purge = count(); }
tracepoint:percpu:percpu_alloc_percpu { @percpu = hist(args->bytes_alloc); }
tracepoint:percpu:percpu_alloc_percpu_fail { @pcfail = count(); }
"#;

/// bpftrace tracking every live allocation on the tracepoints memtrace's heap profile uses,
/// like bcc's memleak in kernel mode: each successful allocation inserts its size and
/// kernel stack (`kstack` in a map value is a `bpf_get_stackid` into bpftrace's stack map,
/// memleak's `stack_traces.get_stackid`) under its address, and each free deletes the
/// address. One map per address space (slab and kmalloc addresses, page frame numbers,
/// vmalloc addresses, per-CPU pointers), so that a page frame number and a pointer cannot
/// meet; the cost per event is one hash update or delete either way. memleak itself does a
/// little more (a per-task size map around each allocation, a lookup before each delete,
/// per-stack totals): this peer is, if anything, cheaper than memleak. The maps are cleared
/// at exit, so that bpftrace does not print every live allocation with its stack.
fn memleak_script(page_size: u64) -> String {
    format!(
        r#"
tracepoint:kmem:kmalloc /args->ptr != 0/ {{ @live[(uint64)args->ptr] = ((uint64)args->bytes_alloc, kstack); }}
tracepoint:kmem:kmem_cache_alloc /args->ptr != 0/ {{ @live[(uint64)args->ptr] = ((uint64)args->bytes_alloc, kstack); }}
tracepoint:kmem:mm_page_alloc /(int64)args->pfn != -1/ {{ @pages[args->pfn] = ((uint64){page_size} << args->order, kstack); }}
tracepoint:vmalloc:alloc_vmap_area /args->failed == 0/ {{ @vmap[args->addr] = ((uint64)args->size, kstack); }}
tracepoint:percpu:percpu_alloc_percpu /args->ptr != 0/ {{ @percpu[(uint64)args->ptr] = ((uint64)args->bytes_alloc, kstack); }}
tracepoint:kmem:kfree {{ delete(@live[(uint64)args->ptr]); }}
tracepoint:kmem:kmem_cache_free {{ delete(@live[(uint64)args->ptr]); }}
tracepoint:kmem:mm_page_free {{ delete(@pages[args->pfn]); }}
tracepoint:kmem:mm_page_free_batched {{ delete(@pages[args->pfn]); }}
tracepoint:vmalloc:free_vmap_area_noflush {{ delete(@vmap[args->va_start]); }}
tracepoint:percpu:percpu_free_percpu {{ delete(@percpu[(uint64)args->ptr]); }}
END {{ clear(@live); clear(@pages); clear(@vmap); clear(@percpu); }}
"#
    )
}

/// The (`category:event`, field) pairs a bpftrace script reads (`args->field`), per
/// tracepoint probe: what the running kernel's tracepoint formats must have.
fn script_fields(script: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in script.lines() {
        let Some(event) = line
            .split_whitespace()
            .next()
            .and_then(|p| p.strip_prefix("tracepoint:"))
        else {
            continue;
        };
        for (_, rest) in line
            .match_indices("args->")
            .map(|(i, _)| line.split_at(i + 6))
        {
            let field: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let pair = (event.to_string(), field);
            if !out.contains(&pair) {
                out.push(pair);
            }
        }
    }
    out
}

/// The fields of a bpftrace script that the running kernel's tracepoint formats lack (or
/// whose tracepoint it lacks), as `category:event args->field`; `format` reads an event's
/// `format` file by `category:event`.
fn missing_fields(script: &str, format: impl Fn(&str) -> Option<String>) -> Vec<String> {
    let has = |text: &str, field: &str| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("field:"))
            .filter_map(|l| l.split(';').next()?.split_whitespace().last())
            .any(|name| name.split('[').next() == Some(field))
    };
    script_fields(script)
        .into_iter()
        .filter(|(event, field)| !format(event).is_some_and(|text| has(&text, field)))
        .map(|(event, field)| format!("{event} args->{field}"))
        .collect()
}

pub struct Options {
    pub reps: usize,
    pub seconds: f64,
    /// Another memtrace binary (e.g. built from the parent commit), run with the daemon's
    /// defaults as the configuration `memtrace-baseline`, interleaved with the others.
    pub baseline: Option<PathBuf>,
    /// An earlier run's bench.json (its path, its contents), to compare with.
    pub previous: Option<(PathBuf, serde_json::Value)>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
struct Run {
    config: String,
    ns_per_op: f64,
    ops: u64,
    seconds: f64,
    paths: BTreeMap<String, f64>,
    /// memtrace configs: traced events counted during the run, lost ones (maps or ring
    /// buffer full), and program runs the kernel skipped (recursion)
    events: Option<u64>,
    lost: Option<u64>,
    skipped: Option<u64>,
    /// the tracer process: CPU seconds used during the workload and peak RSS
    tracer_cpu_seconds: Option<f64>,
    tracer_peak_rss_bytes: Option<u64>,
    /// the tracer's peak RSS before the workload (start-up)
    tracer_startup_peak_rss_bytes: Option<u64>,
    /// memtrace-profile: allocations sampled during the run (memtrace_profile_samples_total),
    /// and the heap profile fetched at its end: its gzipped size and its samples
    profile_samples: Option<u64>,
    heap_profile_bytes: Option<u64>,
    heap_profile_samples: Option<u64>,
}

fn http_get(port: u16, path: &str) -> anyhow::Result<String> {
    String::from_utf8(http_get_bytes(port, path)?).with_context(|| format!("GET {path}: not UTF-8"))
}

fn http_get_bytes(port: u16, path: &str) -> anyhow::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    http_body(&raw).with_context(|| format!("GET {path}"))
}

/// The body of a raw HTTP/1.1 response, which must be a 200 (chunked transfer decoded).
fn http_body(raw: &[u8]) -> anyhow::Result<Vec<u8>> {
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let split = find(raw, b"\r\n\r\n").context("no HTTP body")?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}", head.lines().next().unwrap_or(""));
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Ok(body.to_vec());
    }
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(eol) = find(rest, b"\r\n") {
        let size = String::from_utf8_lossy(&rest[..eol]);
        let size = size.split(';').next().unwrap_or("").trim();
        let n = usize::from_str_radix(size, 16).unwrap_or(0);
        let tail = &rest[eol + 2..];
        if n == 0 || tail.len() < n {
            break;
        }
        out.extend_from_slice(&tail[..n]);
        rest = tail.get(n + 2..).unwrap_or_default();
    }
    Ok(out)
}

/// Checks memtrace-profile's `/debug/pprof/heap`: a gzip (decompressed with `gzip -dc`)
/// holding a non-empty pprof profile. Returns the profile's samples (live samples: it may
/// well have none if every sampled allocation was freed). An error means profiling did not
/// work.
fn check_heap_profile(gz: &[u8]) -> anyhow::Result<usize> {
    if gz.len() < 18 || gz[..2] != [0x1f, 0x8b] {
        bail!(
            "not a gzip ({} bytes{})",
            gz.len(),
            if gz.is_empty() {
                String::new()
            } else {
                format!(", starting {:02x?}", &gz[..gz.len().min(4)])
            }
        );
    }
    let mut child = Command::new("gzip")
        .arg("-dc")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run gzip -dc")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let input = gz.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().context("run gzip -dc")?;
    let _ = writer.join();
    if !out.status.success() {
        bail!(
            "a corrupt gzip: gzip -dc: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if out.stdout.is_empty() {
        bail!("an empty profile (the gzip decompresses to nothing)");
    }
    pprof_samples(&out.stdout).context("the decompressed profile is not a pprof protobuf")
}

/// The samples (field 2 of `perftools.profiles.Profile`) in a pprof protobuf, by walking its
/// top-level fields; `None` if it is not a well-formed protobuf message.
fn pprof_samples(buf: &[u8]) -> Option<usize> {
    fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *buf.get(*at)?;
            *at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    let mut at = 0;
    let mut samples = 0;
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        let skip = match key & 7 {
            0 => {
                varint(buf, &mut at)?;
                0
            }
            1 => 8,
            2 => usize::try_from(varint(buf, &mut at)?).ok()?,
            5 => 4,
            _ => return None,
        };
        if key >> 3 == 0 {
            return None;
        }
        if key == (2 << 3) | 2 {
            samples += 1;
        }
        at = at.checked_add(skip).filter(|&end| end <= buf.len())?;
    }
    Some(samples)
}

/// The sum of every series of one metric in a /metrics text.
fn metric_total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| series.split('{').next() == Some(name))
        .map(|(_, v)| v.parse::<f64>().unwrap_or(0.0))
        .sum()
}

/// (traced events, lost events, program runs the kernel skipped) from a daemon's /metrics.
fn traced_totals(metrics: &str) -> (u64, u64, u64) {
    let mut events = 0f64;
    let mut lost = 0f64;
    let mut skipped = 0f64;
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let v: f64 = value.parse().unwrap_or(0.0);
        let name = series.split('{').next().unwrap_or("");
        match name {
            "memtrace_kmalloc_size_bytes_count"
            | "memtrace_vmalloc_size_bytes_count"
            | "memtrace_percpu_size_bytes_count"
            | "memtrace_kmem_cache_allocations_total"
            | "memtrace_page_allocations_total"
            | "memtrace_frees_total"
            | "memtrace_allocation_failures_total" => events += v,
            "memtrace_events_lost_total" if series.contains("reason=\"recursion\"") => skipped += v,
            "memtrace_events_lost_total" => lost += v,
            _ => {}
        }
    }
    (events as u64, lost as u64, skipped as u64)
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some(ticks / hz)
}

fn peak_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

struct Tracer {
    child: Child,
    port: Option<u16>,
}

impl Drop for Tracer {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts bpftrace with `script` and returns once it has attached its probes.
/// The line bpftrace prints from a BEGIN probe, which it runs once every probe is attached
/// (its "Attaching N probes..." comes before: with large preallocated maps the last probes
/// attach seconds later, and a run measured from "Attaching" measures a tracer half on).
const BPFTRACE_READY: &str = "memtrace-bench: every probe attached";

fn start_bpftrace(script: &str, env: &[(&str, String)]) -> anyhow::Result<Tracer> {
    let script = format!("{script}\nBEGIN {{ printf(\"{BPFTRACE_READY}\\n\"); }}\n");
    let mut child = Command::new("bpftrace")
        .args(["-e", &script])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("start bpftrace")?;
    let stdout = child.stdout.take().context("bpftrace stdout")?;
    let stderr = child.stderr.take().context("bpftrace stderr")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line == BPFTRACE_READY {
                let _ = tx.send(());
            }
        }
    });
    // Its errors, kept (the last few) for the message if it does not attach.
    let errors = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let kept = errors.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut v = kept.lock().unwrap_or_else(|p| p.into_inner());
            v.push(line);
            if v.len() > 20 {
                v.remove(0);
            }
        }
    });
    let t = Tracer { child, port: None };
    if rx.recv_timeout(Duration::from_secs(120)).is_err() {
        std::thread::sleep(Duration::from_millis(200));
        let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).join("\n");
        bail!("bpftrace did not attach within 120 s:\n{errors}");
    }
    Ok(t)
}

fn start(config: &str, memtrace: &Path) -> anyhow::Result<Option<Tracer>> {
    let daemon_args: &[&str] = match config {
        "none" => return Ok(None),
        "bpftrace" => return start_bpftrace(BPFTRACE_SCRIPT, &[]).map(Some),
        MEMLEAK => {
            // SAFETY: sysconf has no preconditions.
            let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            let page_size = u64::try_from(page_size).unwrap_or(4096);
            return start_bpftrace(
                &memleak_script(page_size),
                &[("BPFTRACE_MAP_KEYS_MAX", MEMLEAK_MAP_KEYS.to_string())],
            )
            .map(Some);
        }
        "floor" => &["--probes.hooks-only"],
        "memtrace" | BASELINE => &[],
        PROFILE => &["--profile.enabled", "true"],
        "memtrace-full" => &[
            "--events.stacks",
            "--events.min-bytes",
            "4096",
            "--events.min-order",
            "0",
            "--callsites.max",
            "1000",
            "--processes.max",
            "1000",
            "--caches.max",
            "1000",
        ],
        other => bail!("unknown configuration {other}"),
    };
    let port = free_port()?;
    let child = Command::new(memtrace)
        .arg("daemon")
        .arg("--web.listen-address")
        .arg(format!("127.0.0.1:{port}"))
        .args(daemon_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start memtrace daemon")?;
    let mut t = Tracer {
        child,
        port: Some(port),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while http_get(port, "/healthz").is_err() {
        if let Some(st) = t.child.try_wait()? {
            bail!("memtrace daemon exited with {st}");
        }
        if Instant::now() > deadline {
            bail!("memtrace daemon not healthy after 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Some(t))
}

fn run_once(config: &str, memtrace: &Path, workload: &Path, seconds: f64) -> anyhow::Result<Run> {
    let tracer = start(config, memtrace)?;
    let pid = tracer.as_ref().map(|t| t.child.id());
    let before = match tracer.as_ref().and_then(|t| t.port) {
        Some(port) => Some(http_get(port, "/metrics")?),
        None => None,
    };
    // The peak of start-up (BTF parsing) is reported apart: the budget is about the daemon
    // while the workload runs. Writing 5 to clear_refs resets the peak to the current RSS.
    let startup_rss = pid.and_then(peak_rss);
    if let Some(pid) = pid {
        std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
            .context("resetting the tracer's peak RSS")?;
    }
    let cpu0 = pid.and_then(cpu_seconds);
    // A memtrace daemon is scraped once a second while the workload runs (Prometheus'
    // default is every 15 s), so that its CPU time includes serving metrics.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let scraper = tracer.as_ref().and_then(|t| t.port).map(|port| {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut scrapes = 0u32;
            let mut next = Instant::now() + Duration::from_secs(1);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if Instant::now() >= next {
                    if http_get(port, "/metrics").is_ok() {
                        scrapes += 1;
                    }
                    next += Duration::from_secs(1);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            scrapes
        })
    });
    let out = Command::new(workload)
        .args(["--seconds", &seconds.to_string()])
        .output()
        .context("run workload");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let scrapes = scraper.map(|h| h.join().unwrap_or(0));
    let out = out?;
    if scrapes == Some(0) && seconds >= 2.0 {
        bail!("the daemon answered no scrape while the workload ran");
    }
    if !out.status.success() {
        bail!("workload failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let cpu1 = pid.and_then(cpu_seconds);
    let after = match tracer.as_ref().and_then(|t| t.port) {
        Some(port) => Some(http_get(port, "/metrics")?),
        None => None,
    };
    let rss = pid.and_then(peak_rss);
    // Heap profiling on: its profile, fetched once after the workload, must be a non-empty
    // gzipped pprof, or profiling did not work and the benchmark of it means nothing.
    let heap = match (config, tracer.as_ref().and_then(|t| t.port)) {
        (PROFILE, Some(port)) => {
            let gz = http_get_bytes(port, "/debug/pprof/heap")
                .and_then(|gz| Ok((gz.len() as u64, check_heap_profile(&gz)? as u64)))
                .context("memtrace-profile's /debug/pprof/heap: heap profiling did not work")?;
            Some(gz)
        }
        _ => None,
    };
    drop(tracer);
    let profile_samples = before.as_deref().zip(after.as_deref()).map(|(b, a)| {
        let samples = |m| metric_total(m, "memtrace_profile_samples_total");
        (samples(a) - samples(b)).max(0.0) as u64
    });
    let before = before.as_deref().map(traced_totals);
    let after = after.as_deref().map(traced_totals);
    let w: serde_json::Value = serde_json::from_slice(&out.stdout).context("workload JSON")?;
    Ok(Run {
        config: config.into(),
        ns_per_op: w["ns_per_op"].as_f64().unwrap_or(f64::NAN),
        ops: w["ops"].as_u64().unwrap_or(0),
        seconds: w["seconds"].as_f64().unwrap_or(seconds),
        paths: w["paths"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
                    .collect()
            })
            .unwrap_or_default(),
        events: before.zip(after).map(|(b, a)| a.0.saturating_sub(b.0)),
        lost: before.zip(after).map(|(b, a)| a.1.saturating_sub(b.1)),
        skipped: before.zip(after).map(|(b, a)| a.2.saturating_sub(b.2)),
        tracer_cpu_seconds: cpu0.zip(cpu1).map(|(a, b)| b - a),
        tracer_peak_rss_bytes: rss,
        tracer_startup_peak_rss_bytes: startup_rss,
        profile_samples: profile_samples.filter(|_| config == PROFILE),
        heap_profile_bytes: heap.map(|h| h.0),
        heap_profile_samples: heap.map(|h| h.1),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
            (lo.min(x), hi.max(x))
        })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    format!("Linux {} on {cpus} × {cpu}", kernel.trim())
}

/// One loaded program's statistics from `bpftool prog show`.
#[derive(Clone, Copy, Default)]
struct ProgStat {
    runs: u64,
    ns: u64,
    /// Instructions after the verifier (`bytes_xlated` / 8).
    insns: u64,
}

/// Statistics of the loaded programs by name (summed over programs of one name), from
/// `bpftool prog show` while kernel.bpf_stats_enabled is on.
fn program_stats() -> anyhow::Result<BTreeMap<String, ProgStat>> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("run bpftool")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool JSON")?;
    let mut m = BTreeMap::new();
    for p in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let (Some(name), Some(cnt), Some(ns)) = (
            p["name"].as_str(),
            p["run_cnt"].as_u64(),
            p["run_time_ns"].as_u64(),
        ) else {
            continue;
        };
        let e: &mut ProgStat = m.entry(name.to_string()).or_default();
        e.runs += cnt;
        e.ns += ns;
        e.insns = p["bytes_xlated"].as_u64().unwrap_or(0) / 8;
    }
    Ok(m)
}

/// One row of the per-program profile.
#[derive(Debug, Clone, serde::Serialize)]
struct Profiled {
    program: String,
    /// Runs per profiling run (the default daemon's, or memtrace-profile's for a program
    /// only it loads).
    runs: u64,
    /// The default daemon's average and verified instructions (none for a program only
    /// memtrace-profile loads).
    avg_ns: Option<f64>,
    /// The same program's average with `--probes.hooks-only` (it returns at once).
    floor_avg_ns: Option<f64>,
    verified_insns: Option<u64>,
    /// The same program's average and verified instructions with heap profiling on.
    profile_avg_ns: Option<f64>,
    profile_verified_insns: Option<u64>,
    /// The same program's average and verified instructions in `--baseline-binary`'s daemon.
    baseline_avg_ns: Option<f64>,
    baseline_verified_insns: Option<u64>,
    /// The verified code against the baseline's (see [`compare_code`]).
    code_vs_baseline: Option<String>,
}

/// Whether `name` is one of the memtrace programs the profile reports (the host attaches
/// the tp_btf and classic ones).
fn is_profiled(name: &str) -> bool {
    name.ends_with("_btf") || name.ends_with("_tp") || name.ends_with("_btf_fixed")
}

/// One profiling run of one program: (runs, average ns per run, verified instructions).
type ProgramRun = (u64, f64, u64);

/// Runs `config` once more with BPF run-time statistics on and returns, per memtrace
/// program that ran, (name, runs, average ns per run, verified instructions): the kernel's
/// own accounting, which adds a little time of its own to every run.
fn profile(
    config: &str,
    memtrace: &Path,
    workload: &Path,
    seconds: f64,
) -> anyhow::Result<Vec<(String, u64, f64, u64)>> {
    let stats = Path::new("/proc/sys/kernel/bpf_stats_enabled");
    let old = std::fs::read_to_string(stats).unwrap_or_else(|_| "0".into());
    std::fs::write(stats, "1").context("enable kernel.bpf_stats_enabled")?;
    let result = (|| {
        let tracer = start(config, memtrace)?;
        let before = program_stats()?;
        let out = Command::new(workload)
            .args(["--seconds", &seconds.to_string()])
            .output()?;
        if !out.status.success() {
            bail!("workload failed");
        }
        let after = program_stats()?;
        drop(tracer);
        let mut rows: Vec<(String, u64, f64, u64)> = after
            .iter()
            .filter(|(name, _)| is_profiled(name))
            .filter_map(|(name, a)| {
                let b = before.get(name).copied().unwrap_or_default();
                let runs = a.runs.saturating_sub(b.runs);
                (runs > 0).then(|| {
                    let avg = a.ns.saturating_sub(b.ns) as f64 / runs as f64;
                    (name.clone(), runs, avg, a.insns)
                })
            })
            .collect();
        rows.sort_by(|a, b| (b.1 as f64 * b.2).total_cmp(&(a.1 as f64 * a.2)));
        Ok(rows)
    })();
    let _ = std::fs::write(stats, old.trim());
    result
}

/// The verified (xlated) code of every memtrace program `config` loads, by program name:
/// one line per instruction, without the source annotations, kernel addresses and map ids
/// that differ between two loads of the same code.
fn xlated_code(config: &str, memtrace: &Path) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let tracer = start(config, memtrace)?;
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .context("run bpftool")?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool JSON")?;
    let mut code = BTreeMap::new();
    for p in v.as_array().map(Vec::as_slice).unwrap_or_default() {
        let (Some(name), Some(id)) = (p["name"].as_str(), p["id"].as_u64()) else {
            continue;
        };
        if !is_profiled(name) {
            continue;
        }
        let dump = Command::new("bpftool")
            .args(["prog", "dump", "xlated", "id", &id.to_string()])
            .output()
            .context("run bpftool prog dump")?;
        code.insert(
            name.to_string(),
            normalized_xlated(&String::from_utf8_lossy(&dump.stdout)),
        );
    }
    drop(tracer);
    Ok(code)
}

/// `bpftool prog dump xlated` text as comparable instructions: source-line annotations
/// (`; …`) and instruction numbers dropped, kernel addresses and map ids masked.
fn normalized_xlated(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(|l| {
            let l = l.split_once(": ").map_or(l, |(n, rest)| {
                if n.chars().all(|c| c.is_ascii_digit()) {
                    rest
                } else {
                    l
                }
            });
            l.split(' ')
                .map(|w| {
                    let hex = w.trim_start_matches("0x");
                    if w.starts_with("0x") && hex.len() >= 8 {
                        "<addr>".to_string()
                    } else if let Some(rest) = w.strip_prefix("map[id:") {
                        format!(
                            "map[id:*{}",
                            rest.trim_start_matches(|c: char| c.is_ascii_digit())
                        )
                    } else {
                        w.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// How program code `now` compares with `base`: identical; the same instructions with other
/// stack slots or registers (the same count and opcodes, a register allocation or frame
/// layout change); or different.
fn compare_code(base: &[String], now: &[String]) -> String {
    if base == now {
        return "identical".into();
    }
    let opcodes = |c: &[String]| {
        let mut v: Vec<String> = c
            .iter()
            .map(|i| i.split(')').next().unwrap_or("").to_string())
            .collect();
        v.sort();
        v
    };
    let differing = base.iter().zip(now).filter(|(a, b)| a != b).count();
    if base.len() == now.len() && opcodes(base) == opcodes(now) {
        format!(
            "same instructions, {differing} of {} with other stack slots or registers",
            now.len()
        )
    } else {
        format!(
            "different: {} instructions against {}, {differing} differ in place",
            now.len(),
            base.len()
        )
    }
}

/// One row of the per-program table: runs; the default daemon's ns per run, the floor's,
/// what the body adds and the verified instructions; the same with heap profiling on; and,
/// with a baseline, the baseline's and how its verified code compares.
fn program_row(p: &Profiled, with_baseline: bool) -> String {
    let ns = |x: Option<f64>| x.map_or("—".to_string(), |x| format!("{x:.0}"));
    let over_floor = |x: Option<f64>| match (x, p.floor_avg_ns) {
        (Some(x), Some(f)) => format!("{:+.0}", x - f),
        _ => "—".into(),
    };
    let insns = |i: Option<u64>| i.map_or("—".to_string(), |i| i.to_string());
    let mut row = format!(
        "| `{}` | {} | {} | {} | {} | {} | {} | {} | {} |",
        p.program,
        p.runs,
        ns(p.avg_ns),
        ns(p.floor_avg_ns),
        over_floor(p.avg_ns),
        insns(p.verified_insns),
        ns(p.profile_avg_ns),
        over_floor(p.profile_avg_ns),
        insns(p.profile_verified_insns),
    );
    if with_baseline {
        row.push_str(&format!(
            " {} | {} | {} | {} |",
            ns(p.baseline_avg_ns),
            over_floor(p.baseline_avg_ns),
            insns(p.baseline_verified_insns),
            p.code_vs_baseline.as_deref().unwrap_or("—"),
        ));
    }
    row + "\n"
}

/// What memtrace-profile's runs took and served: allocations sampled a second
/// (`memtrace_profile_samples_total`), and the heap profile fetched at the end of each run
/// (its gzipped size and its live samples), as a line of the results' notes.
fn heap_profile_note(runs: &[&Run]) -> String {
    let range = |v: Vec<u64>| match (v.iter().min(), v.iter().max()) {
        (Some(lo), Some(hi)) if lo == hi => lo.to_string(),
        (Some(lo), Some(hi)) => format!("{lo}–{hi}"),
        _ => "—".into(),
    };
    let per_second = median(
        runs.iter()
            .filter_map(|r| r.profile_samples.map(|n| n as f64 / r.seconds))
            .collect(),
    );
    format!(
        "- memtrace-profile sampled {} allocations a second (`memtrace_profile_samples_total`, the \
median over its runs); the heap profile it served at the end of each run (`/debug/pprof/heap`, \
checked to be a gzipped pprof, or the benchmark fails) was {} bytes gzipped with {} live \
samples.\n",
        if per_second.is_finite() {
            format!("{per_second:.0}")
        } else {
            "—".into()
        },
        range(runs.iter().filter_map(|r| r.heap_profile_bytes).collect()),
        range(runs.iter().filter_map(|r| r.heap_profile_samples).collect()),
    )
}

/// What the default daemon measured, against the budget of the benchmark issue.
struct Budget {
    vs_floor: f64,
    vs_bpftrace: f64,
    /// memtrace-profile's added cost per traced event over the default daemon's and over
    /// bpftrace-memleak's (the heap profile's issue, #15)
    profile_vs_memtrace: f64,
    profile_vs_memleak: f64,
    cpu_percent: f64,
    rss_bytes: u64,
    events_per_second: f64,
    lost: u64,
}

/// The budget as Markdown lines, each with what was measured and whether it is met. This is
/// a report, not a test: nothing fails on it.
fn budget_lines(b: &Budget) -> String {
    let verdict = |ok: bool| if ok { "met" } else { "**not met**" };
    let rss_mib = b.rss_bytes as f64 / 1048576.0;
    [
        format!(
            "- Added cost per traced event within 1.5× the floor's: {:.2}× — {}.",
            b.vs_floor,
            verdict(b.vs_floor <= 1.5)
        ),
        format!(
            "- Below bpftrace's on the same events: {:.2}× — {}.",
            b.vs_bpftrace,
            verdict(b.vs_bpftrace < 1.0)
        ),
        format!(
            "- The daemon below 2% of one CPU and 64 MiB RSS at over a million traced allocations \
             a second: {:.1}% and {rss_mib:.1} MiB at {:.2} M events/s — {}.",
            b.cpu_percent,
            b.events_per_second / 1e6,
            verdict(b.cpu_percent < 2.0 && rss_mib < 64.0 && b.events_per_second > 1e6)
        ),
        format!(
            "- Zero lost aggregated counts: {} lost — {}.",
            b.lost,
            verdict(b.lost == 0)
        ),
        format!(
            "- Heap profiles (#15): memtrace-profile's added cost per traced event ≤ 1.3× \
             memtrace's (default daemon): {:.2}× — {}.",
            b.profile_vs_memtrace,
            verdict(b.profile_vs_memtrace <= 1.3)
        ),
        format!(
            "- Heap profiles (#15): memtrace-profile's added cost per traced event < 0.25× \
             bpftrace-memleak's: {:.2}× — {}.",
            b.profile_vs_memleak,
            verdict(b.profile_vs_memleak < 0.25)
        ),
    ]
    .join("\n")
        + "\n"
}

pub fn run(root: &Path, opts: &Options) -> anyhow::Result<()> {
    let memtrace = root.join("target/release/memtrace");
    let workload = root.join("target/release/workload");
    if Command::new("bpftrace").arg("--version").output().is_err() {
        bail!("bpftrace is not installed (cargo xtask bench installs it with apt-get as root)");
    }
    // The peers' tracepoint fields, checked against this kernel before anything is measured.
    let format = |event: &str| {
        let (category, name) = event.split_once(':')?;
        std::fs::read_to_string(format!(
            "/sys/kernel/tracing/events/{category}/{name}/format"
        ))
        .ok()
    };
    for (config, script) in [
        ("bpftrace", BPFTRACE_SCRIPT.to_string()),
        (MEMLEAK, memleak_script(4096)),
    ] {
        let missing = missing_fields(&script, format);
        if !missing.is_empty() {
            bail!(
                "{config}: this kernel's tracepoints lack {}",
                missing.join(", ")
            );
        }
    }
    let configs: Vec<&'static str> = CONFIGS
        .iter()
        .copied()
        .chain(opts.baseline.as_ref().map(|_| BASELINE))
        .collect();
    let binary = |config: &str| match (&opts.baseline, config) {
        (Some(b), BASELINE) => b.clone(),
        _ => memtrace.clone(),
    };
    let mut runs: Vec<Run> = Vec::new();
    for rep in 0..opts.reps {
        for i in 0..configs.len() {
            let config = configs[(i + rep) % configs.len()];
            let r = run_once(config, &binary(config), &workload, opts.seconds)
                .with_context(|| format!("{config}, repetition {}", rep + 1))?;
            eprintln!(
                "bench: rep {}/{} {:<14} {:>8.1} ns/op{}",
                rep + 1,
                opts.reps,
                config,
                r.ns_per_op,
                r.events.map_or(String::new(), |e| format!(", {e} events"))
            );
            runs.push(r);
        }
    }

    fn select<'a>(runs: &'a [Run], c: &'a str) -> impl Iterator<Item = &'a Run> + 'a {
        runs.iter().filter(move |r| r.config == c)
    }
    let of = |c: &'static str| select(&runs, c);
    let ns = |c: &'static str| of(c).map(|r| r.ns_per_op).collect::<Vec<_>>();
    let base = median(ns("none"));
    // Traced events per operation, from the default daemon's own counts.
    let events_per_op = median(
        of("memtrace")
            .filter_map(|r| r.events.map(|e| e as f64 / r.ops.max(1) as f64))
            .collect(),
    );
    let added = |c: &'static str| (median(ns(c)) - base) / events_per_op;
    let mut table = String::new();
    let mut json_configs = serde_json::Map::new();
    for &c in &configs {
        let v = ns(c);
        let (lo, hi) = min_max(&v);
        let m = median(v.clone());
        let cpu = median(
            of(c)
                .filter_map(|r| r.tracer_cpu_seconds.map(|s| 100.0 * s / r.seconds))
                .collect(),
        );
        let rss = of(c).filter_map(|r| r.tracer_peak_rss_bytes).max();
        let startup_rss = of(c).filter_map(|r| r.tracer_startup_peak_rss_bytes).max();
        let eps = median(
            of(c)
                .filter_map(|r| r.events.map(|e| e as f64 / r.seconds))
                .collect(),
        );
        let lost: u64 = of(c).filter_map(|r| r.lost).sum();
        let skipped: u64 = of(c).filter_map(|r| r.skipped).sum();
        let add = if c == "none" { 0.0 } else { added(c) };
        table.push_str(&format!(
            "| {c} | {m:.0} | {lo:.0}–{hi:.0} | {:.3} | {} | {} | {} | {} | {} | {} | {} |\n",
            m / base,
            if c == "none" {
                "—".into()
            } else {
                format!("{add:.1}")
            },
            if cpu.is_finite() {
                format!("{cpu:.1}%")
            } else {
                "—".into()
            },
            rss.map_or("—".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
            startup_rss.map_or("—".into(), |b| format!("{:.1} MiB", b as f64 / 1048576.0)),
            if eps.is_finite() {
                format!("{:.2} M/s", eps / 1e6)
            } else {
                "—".into()
            },
            if c.starts_with("memtrace") || c == "floor" {
                lost.to_string()
            } else {
                "—".into()
            },
            if c.starts_with("memtrace") || c == "floor" {
                skipped.to_string()
            } else {
                "—".into()
            },
        ));
        json_configs.insert(
            c.into(),
            serde_json::json!({
                "ns_per_op_median": m, "ns_per_op_min": lo, "ns_per_op_max": hi,
                "ratio_to_none": m / base, "added_ns_per_event": add,
                "tracer_cpu_percent_of_one_cpu": cpu, "tracer_peak_rss_bytes": rss,
                "tracer_startup_peak_rss_bytes": startup_rss,
                "events_per_second": eps, "lost_events": lost,
                "runs_skipped_by_kernel": skipped,
            }),
        );
        if c == PROFILE {
            let o = json_configs
                .get_mut(c)
                .and_then(serde_json::Value::as_object_mut)
                .context("the configuration's JSON")?;
            let median_of = |f: fn(&Run) -> Option<u64>| {
                median(of(c).filter_map(f).map(|x| x as f64).collect())
            };
            o.insert(
                "profile_samples_per_second".into(),
                median(
                    of(c)
                        .filter_map(|r| r.profile_samples.map(|n| n as f64 / r.seconds))
                        .collect(),
                )
                .into(),
            );
            o.insert(
                "heap_profile_bytes_median".into(),
                median_of(|r| r.heap_profile_bytes).into(),
            );
            o.insert(
                "heap_profile_samples_median".into(),
                median_of(|r| r.heap_profile_samples).into(),
            );
        }
    }
    // Per program, the median over alternating profiling runs of each configuration.
    let mut profiled: BTreeMap<&str, BTreeMap<String, Vec<ProgramRun>>> = BTreeMap::new();
    let profile_configs: Vec<&'static str> = ["floor", "memtrace", PROFILE]
        .into_iter()
        .chain(opts.baseline.as_ref().map(|_| BASELINE))
        .collect();
    for _ in 0..PROFILE_REPS {
        for &c in &profile_configs {
            for (name, runs, avg, insns) in profile(c, &binary(c), &workload, opts.seconds)
                .with_context(|| format!("profiling {c}"))?
            {
                profiled
                    .entry(c)
                    .or_default()
                    .entry(name)
                    .or_default()
                    .push((runs, avg, insns));
            }
        }
    }
    let rows_of = |c: &str, program: &str| profiled.get(c).and_then(|m| m.get(program));
    let avg_of = |c: &str, program: &str| {
        let v = rows_of(c, program)?;
        Some(median(v.iter().map(|r| r.1).collect()))
    };
    let insns_of = |c: &str, program: &str| rows_of(c, program)?.first().map(|r| r.2);
    // The default daemon's programs, and those only heap profiling loads.
    let names: std::collections::BTreeSet<&String> = ["memtrace", PROFILE]
        .iter()
        .filter_map(|c| profiled.get(c))
        .flat_map(BTreeMap::keys)
        .collect();
    let mut programs: Vec<Profiled> = names
        .into_iter()
        .map(|program| {
            let rows = rows_of("memtrace", program)
                .or_else(|| rows_of(PROFILE, program))
                .map(Vec::as_slice)
                .unwrap_or_default();
            Profiled {
                program: program.clone(),
                runs: rows.iter().map(|r| r.0).sum::<u64>() / rows.len().max(1) as u64,
                avg_ns: avg_of("memtrace", program),
                floor_avg_ns: avg_of("floor", program),
                verified_insns: insns_of("memtrace", program),
                profile_avg_ns: avg_of(PROFILE, program),
                profile_verified_insns: insns_of(PROFILE, program),
                baseline_avg_ns: avg_of(BASELINE, program),
                baseline_verified_insns: insns_of(BASELINE, program),
                code_vs_baseline: None,
            }
        })
        .collect();
    let weight = |p: &Profiled| p.runs as f64 * p.avg_ns.or(p.profile_avg_ns).unwrap_or(0.0);
    programs.sort_by(|a, b| weight(b).total_cmp(&weight(a)));
    // The verified code of each program against the baseline's: where it is the same, any
    // difference in time is the machine's, not the code's.
    if let Some(b) = &opts.baseline {
        let now = xlated_code("memtrace", &memtrace)?;
        let base = xlated_code(BASELINE, b)?;
        for p in &mut programs {
            p.code_vs_baseline = match (base.get(&p.program), now.get(&p.program)) {
                (Some(b), Some(n)) => Some(compare_code(b, n)),
                _ => None,
            };
        }
    }
    let prog_table: String = programs
        .iter()
        .map(|p| program_row(p, opts.baseline.is_some()))
        .collect();
    let (prog_head, prog_rule, baseline_text) = match &opts.baseline {
        Some(b) => (
            " ns per run, baseline | added, baseline | verified instructions, baseline | verified code against the baseline's |",
            " --- | --- | --- | --- |",
            format!(
                "\n## Against a baseline binary\n\n\
`memtrace-baseline` is `{}` ({}), run with the daemon's defaults in the same session, \
interleaved with the other configurations: memtrace's added cost per traced event is \
**{:.2}×** the baseline's (its own: {:.2}× the floor's; the baseline's: {:.2}×). The programs' \
table above sets each program's time beside the baseline's, as the median of {PROFILE_REPS} \
alternating profiling runs each, and compares the code the verifier accepted for each \
(`bpftool prog dump xlated`, without source annotations, addresses and map ids): where it \
is the same, a difference in time is the machine's.\n",
                b.display(),
                binary_version(b),
                added("memtrace") / added(BASELINE),
                added("memtrace") / added("floor"),
                added(BASELINE) / added("floor"),
            ),
        ),
        None => ("", "", String::new()),
    };
    let vs_floor = added("memtrace") / added("floor");
    let vs_bpftrace = added("memtrace") / added("bpftrace");
    let full_vs_floor = added("memtrace-full") / added("floor");
    let profile_vs_memtrace = added(PROFILE) / added("memtrace");
    let profile_vs_memleak = added(PROFILE) / added(MEMLEAK);
    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let md = format!(
        "# memtrace benchmarks\n\n\
Measured by `cargo xtask bench` on {machine}, {date}: {reps} repetitions of {secs} s per \
configuration, interleaved (the order rotates each repetition). Regenerate with `cargo xtask bench`; \
absolute numbers are this machine's, the ratios are the point.\n\n\
The workload (`xtask/src/bin/workload.rs`) repeats one operation: `setxattr(2)` of a 1000-byte \
value on tmpfs (a 1 KiB kmalloc and its kfree, and shmem's copy), `open(2)`+`close(2)` (a `filp` \
slab object, a `names_cache` buffer, and their frees), and a fresh pipe written with one page \
(an order-0 page and its free, and the pipe's kmallocs). memtrace counted {epo:.1} traced events \
per operation. A run's ns/op is the median over its batches of 100 operations (a batch that \
was preempted or lost its virtual CPU moves the mean, not the median).\n\n\
## Budget\n\n{budget}\n\
## Results\n\n\
| configuration | ns/op (median) | min–max | ratio to none | added ns per traced event | tracer CPU (% of one CPU) | tracer peak RSS during the workload | tracer peak RSS at start-up | traced events seen | lost events | runs skipped by the kernel |\n\
| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n{table}\n\
- **none**: no tracing. **floor**: memtrace's programs attached to the same tracepoints, returning at \
once (`--probes.hooks-only`): the cost of the hooks themselves. **memtrace**: `memtrace daemon` with \
defaults. **memtrace-full**: notable events from 4 KiB and order 0 with kernel stacks, 1000-series \
attribution. **memtrace-profile**: defaults with heap profiling on (`--profile.enabled true`, at the \
default sampling rate of one sample per 512 KiB allocated on average). **bpftrace**: memtrace's default \
aggregation written with hist()/sum()/count() on the same tracepoints. **bpftrace-memleak**: full \
tracking of live allocations like bcc's memleak, the heap profile's peer: per successful allocation a \
hash insert of its size and kernel stack (`kstack`, a stack id in bpftrace's stack map, as memleak's \
`get_stackid`), per free a hash delete, on the same allocation and free tracepoints (kmalloc, \
kmem_cache, pages, vmalloc, per-CPU; {memleak_keys} entries per map, `BPFTRACE_MAP_KEYS_MAX`).\n\
- memtrace's added cost per traced event is **{vs_floor:.2}×** the floor's and **{vs_bpftrace:.2}×** \
bpftrace's; with everything on, **{full_vs_floor:.2}×** the floor's; with heap profiling on, \
**{profile_vs_memtrace:.2}×** the default daemon's and **{profile_vs_memleak:.2}×** bpftrace-memleak's.\n\
{heap_note}- Lost events are memtrace's own (a map or the ring buffer full); runs skipped by the kernel \
are `memtrace_events_lost_total{{reason=\"recursion\"}}`: an interrupt that allocates or frees \
on a CPU where the same program is running is not run again there, for any BPF tracer, the \
floor included.\n\
- Tracer CPU is the tracer process's own user+system time over the run (the in-kernel program time \
is in the workload's ns/op), with memtrace's `/metrics` scraped once a second; for bpftrace most \
of its work happens at exit.\n\n\
## Where the time goes\n\n\
Profiling runs of the floor, the default daemon and memtrace-profile (and of the baseline, if any), \
alternating, with `kernel.bpf_stats_enabled=1` (the kernel's own accounting of each program's run \
time, which adds the same small time to every run of each), read with `bpftool`; verified instructions are the whole program's after the \
verifier removed what the load-time constants make dead, not the instructions of one run; \
each time is the median of {PROFILE_REPS} alternating profiling runs:\n\n\
| program | runs | ns per run | ns per run, floor | added | verified instructions | ns per run, profile | added, profile | verified instructions, profile |{prog_head}\n\
| --- | --- | --- | --- | --- | --- | --- | --- | --- |{prog_rule}\n{prog_table}{baseline_text}",
        machine = machine(),
        reps = opts.reps,
        secs = opts.seconds,
        epo = events_per_op,
        memleak_keys = MEMLEAK_MAP_KEYS,
        heap_note = heap_profile_note(&of(PROFILE).collect::<Vec<_>>()),
        budget = budget_lines(&Budget {
            vs_floor,
            vs_bpftrace,
            profile_vs_memtrace,
            profile_vs_memleak,
            cpu_percent: median(
                of("memtrace")
                    .filter_map(|r| r.tracer_cpu_seconds.map(|s| 100.0 * s / r.seconds))
                    .collect(),
            ),
            rss_bytes: of("memtrace")
                .filter_map(|r| r.tracer_peak_rss_bytes)
                .max()
                .unwrap_or(0),
            events_per_second: median(
                of("memtrace")
                    .filter_map(|r| r.events.map(|e| e as f64 / r.seconds))
                    .collect(),
            ),
            lost: of("memtrace").filter_map(|r| r.lost).sum(),
        }),
    );
    let json = serde_json::json!({
        "machine": machine(), "date": date, "commit": commit(root), "reps": opts.reps, "seconds": opts.seconds,
        "events_per_op": events_per_op,
        "memtrace_added_vs_floor": vs_floor, "memtrace_added_vs_bpftrace": vs_bpftrace,
        "full_added_vs_floor": full_vs_floor,
        "profile_added_vs_memtrace": profile_vs_memtrace,
        "profile_added_vs_memleak": profile_vs_memleak,
        "configs": json_configs, "runs": runs,
        "baseline": opts.baseline.as_ref().map(|b| b.display().to_string()),
        "memtrace_added_vs_baseline": opts.baseline.as_ref().map(|_| added("memtrace") / added(BASELINE)),
        "programs": programs,
    });
    let mut md = md;
    if let Some((path, prev)) = &opts.previous {
        md.push_str(&previous_section(prev, &json, &path.display().to_string()));
    }
    std::fs::write(root.join("BENCHMARKS.md"), &md)?;
    let out_dir = root.join("target/bench");
    std::fs::create_dir_all(&out_dir)?;
    std::fs::write(
        out_dir.join("bench.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    println!("{md}");
    eprintln!(
        "bench: wrote BENCHMARKS.md and {}",
        PathBuf::from("target/bench/bench.json").display()
    );
    Ok(())
}

/// Reads `--previous`: an earlier run's bench.json (checked before the measurement, not
/// after it).
pub fn read_previous(path: PathBuf) -> anyhow::Result<(PathBuf, serde_json::Value)> {
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("--previous {}: cannot read it", path.display()))?;
    let json = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .filter(|v| v.get("configs").is_some_and(serde_json::Value::is_object))
        .with_context(|| {
            format!(
                "--previous {}: not a bench.json of `cargo xtask bench`",
                path.display()
            )
        })?;
    Ok((path, json))
}

/// Checks `--baseline-binary` before the measurement: a file that answers `--version`.
pub fn check_baseline(binary: &Path) -> anyhow::Result<()> {
    if !binary.is_file() {
        bail!("--baseline-binary {}: no such file", binary.display());
    }
    if binary_version(binary) == "unknown" {
        bail!(
            "--baseline-binary {}: does not answer --version (not a memtrace binary?)",
            binary.display()
        );
    }
    Ok(())
}

/// The hot programs whose cost `--previous` compares (the 6.18 fixed-layout ones).
const HOT_PROGRAMS: [&str; 6] = [
    "kmem_cache_alloc_btf_fixed",
    "kmem_cache_free_btf_fixed",
    "kmalloc_btf_fixed",
    "kfree_btf_fixed",
    "mm_page_alloc_btf_fixed",
    "mm_page_free_btf_fixed",
];

/// `BENCHMARKS.md`'s comparison with an earlier run's `bench.json` (`--previous`): the
/// ratios each run measured against its own floor and peer, side by side (absolute times of
/// two sessions are not comparable; ratios within each are), and per hot program the added
/// time per run over the floor and the verified instructions.
fn previous_section(prev: &serde_json::Value, now: &serde_json::Value, path: &str) -> String {
    let num = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_f64);
    let text = |v: &serde_json::Value, k: &str| {
        v.get(k)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("not recorded")
            .to_string()
    };
    let cell =
        |x: Option<f64>, digits: usize| x.map_or("—".to_string(), |x| format!("{x:.digits$}"));
    let change = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if a != 0.0 => format!("{:.2}×", b / a),
        _ => "—".into(),
    };
    let mut rows = String::new();
    for (label, key) in [
        (
            "memtrace's added cost per traced event, × the floor's",
            "memtrace_added_vs_floor",
        ),
        ("the same, × bpftrace's", "memtrace_added_vs_bpftrace"),
        ("memtrace-full's, × the floor's", "full_added_vs_floor"),
        (
            "memtrace-profile's, × memtrace's (default daemon)",
            "profile_added_vs_memtrace",
        ),
        (
            "memtrace-profile's, × bpftrace-memleak's",
            "profile_added_vs_memleak",
        ),
    ] {
        let (a, b) = (num(prev, key), num(now, key));
        rows.push_str(&format!(
            "| {label} | {} | {} | {} |\n",
            cell(a, 2),
            cell(b, 2),
            change(a, b)
        ));
    }
    let program = |v: &serde_json::Value, name: &str| -> Option<serde_json::Value> {
        v.get("programs")?
            .as_array()?
            .iter()
            .find(|p| p.get("program").and_then(serde_json::Value::as_str) == Some(name))
            .cloned()
    };
    for name in HOT_PROGRAMS {
        let (a, b) = (program(prev, name), program(now, name));
        let added = |p: &Option<serde_json::Value>| {
            let p = p.as_ref()?;
            Some(num(p, "avg_ns")? - num(p, "floor_avg_ns")?)
        };
        let insns = |p: &Option<serde_json::Value>| num(p.as_ref()?, "verified_insns");
        rows.push_str(&format!(
            "| `{name}`: ns per run over the floor | {} | {} | — |\n",
            cell(added(&a), 0),
            cell(added(&b), 0),
        ));
        rows.push_str(&format!(
            "| `{name}`: verified instructions | {} | {} | {} |\n",
            cell(insns(&a), 0),
            cell(insns(&b), 0),
            change(insns(&a), insns(&b)),
        ));
    }
    format!(
        "\n## Against a previous run\n\n\
The previous run is `{path}`: {pdate}, commit {pcommit}, {preps} repetitions of {psecs} s; \
this one is commit {commit}. Absolute times of two sessions are not comparable, the ratios \
each run measured against its own floor and peer are.\n\n\
| measure | previous | now | now ÷ previous |\n\
| --- | --- | --- | --- |\n{rows}",
        pdate = text(prev, "date"),
        pcommit = text(prev, "commit"),
        preps = cell(num(prev, "reps"), 0),
        psecs = cell(num(prev, "seconds"), 0),
        commit = text(now, "commit"),
    )
}

/// `memtrace --version` of a binary (`unknown` if it does not answer).
fn binary_version(binary: &Path) -> String {
    Command::new(binary)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "unknown".to_string(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_string(),
        )
}

/// The commit measured: `git describe`-style short hash, `-dirty` with uncommitted changes.
fn commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match git(&["rev-parse", "--short", "HEAD"]) {
        Some(hash) => match git(&["status", "--porcelain", "--untracked-files=no"]) {
            Some(changes) if !changes.is_empty() => format!("{hash}-dirty"),
            _ => hash,
        },
        None => "not recorded".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
        assert_eq!(min_max(&[2.0, 5.0, 1.0]), (1.0, 5.0));
    }

    #[test]
    fn budget_says_what_is_met_and_what_is_not() {
        let b = Budget {
            vs_floor: 1.2,
            vs_bpftrace: 0.3,
            profile_vs_memtrace: 1.25,
            profile_vs_memleak: 0.1,
            cpu_percent: 0.5,
            rss_bytes: 40 << 20,
            events_per_second: 5e6,
            lost: 0,
        };
        let text = budget_lines(&b);
        assert_eq!(text.matches("— met.").count(), 6, "{text}");
        assert!(
            text.contains(
                "memtrace-profile's added cost per traced event ≤ 1.3× memtrace's (default \
                 daemon): 1.25× — met."
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "memtrace-profile's added cost per traced event < 0.25× bpftrace-memleak's: \
                 0.10× — met."
            ),
            "{text}"
        );
        let text = budget_lines(&Budget {
            vs_floor: 1.6,
            rss_bytes: 70 << 20,
            lost: 3,
            ..b
        });
        assert_eq!(text.matches("**not met**").count(), 3, "{text}");
        assert!(text.contains("1.60×"), "{text}");
        // The heap profile's lines: the bounds themselves are met, just over them is not, and
        // a ratio that could not be measured (NaN) is not met either.
        let edge = budget_lines(&Budget {
            profile_vs_memtrace: 1.3,
            profile_vs_memleak: 0.2499,
            ..b
        });
        assert_eq!(edge.matches("— met.").count(), 6, "{edge}");
        let over = budget_lines(&Budget {
            profile_vs_memtrace: 1.31,
            profile_vs_memleak: 0.25,
            ..b
        });
        assert!(
            over.contains("(default daemon): 1.31× — **not met**."),
            "{over}"
        );
        assert!(over.contains("memleak's: 0.25× — **not met**."), "{over}");
        let unmeasured = budget_lines(&Budget {
            profile_vs_memtrace: f64::NAN,
            profile_vs_memleak: f64::NAN,
            ..b
        });
        assert_eq!(
            unmeasured.matches("NaN× — **not met**.").count(),
            2,
            "{unmeasured}"
        );
    }

    #[test]
    fn memleak_peer_inserts_per_allocation_and_deletes_per_free() {
        let script = memleak_script(4096);
        let probes: Vec<&str> = script
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert_eq!(
            probes,
            [
                "tracepoint:kmem:kmalloc",
                "tracepoint:kmem:kmem_cache_alloc",
                "tracepoint:kmem:mm_page_alloc",
                "tracepoint:vmalloc:alloc_vmap_area",
                "tracepoint:percpu:percpu_alloc_percpu",
                "tracepoint:kmem:kfree",
                "tracepoint:kmem:kmem_cache_free",
                "tracepoint:kmem:mm_page_free",
                "tracepoint:kmem:mm_page_free_batched",
                "tracepoint:vmalloc:free_vmap_area_noflush",
                "tracepoint:percpu:percpu_free_percpu",
                "END",
            ]
        );
        let body = |probe: &str| {
            script
                .lines()
                .find(|l| l.starts_with(&format!("{probe} ")))
                .unwrap()
                .to_string()
        };
        // Each allocation: one insert of (size, kernel stack), skipping failures.
        for (probe, map, key, size) in [
            (
                "kmalloc",
                "live",
                "(uint64)args->ptr",
                "(uint64)args->bytes_alloc",
            ),
            (
                "kmem_cache_alloc",
                "live",
                "(uint64)args->ptr",
                "(uint64)args->bytes_alloc",
            ),
            (
                "mm_page_alloc",
                "pages",
                "args->pfn",
                "(uint64)4096 << args->order",
            ),
            (
                "alloc_vmap_area",
                "vmap",
                "args->addr",
                "(uint64)args->size",
            ),
            (
                "percpu_alloc_percpu",
                "percpu",
                "(uint64)args->ptr",
                "(uint64)args->bytes_alloc",
            ),
        ] {
            let line = script
                .lines()
                .find(|l| l.contains(&format!(":{probe} ")))
                .unwrap();
            assert!(
                line.contains(&format!("{{ @{map}[{key}] = ({size}, kstack); }}")),
                "{line}"
            );
            assert!(
                line.contains(" /") && line.matches('@').count() == 1,
                "{line}"
            );
        }
        // Each free: one delete from the map its allocation went to.
        for (probe, map, key) in [
            ("tracepoint:kmem:kfree", "live", "(uint64)args->ptr"),
            (
                "tracepoint:kmem:kmem_cache_free",
                "live",
                "(uint64)args->ptr",
            ),
            ("tracepoint:kmem:mm_page_free", "pages", "args->pfn"),
            ("tracepoint:kmem:mm_page_free_batched", "pages", "args->pfn"),
            (
                "tracepoint:vmalloc:free_vmap_area_noflush",
                "vmap",
                "args->va_start",
            ),
            (
                "tracepoint:percpu:percpu_free_percpu",
                "percpu",
                "(uint64)args->ptr",
            ),
        ] {
            assert_eq!(body(probe), format!("{probe} {{ delete(@{map}[{key}]); }}"));
        }
        // Nothing printed at exit: every map cleared.
        assert_eq!(
            body("END"),
            "END { clear(@live); clear(@pages); clear(@vmap); clear(@percpu); }"
        );
        assert!(memleak_script(16384).contains("(uint64)16384 << args->order"));
    }

    #[test]
    fn peer_scripts_read_only_fields_the_kernel_has() {
        let fields = script_fields(&memleak_script(4096));
        assert!(fields.contains(&("kmem:mm_page_alloc".into(), "order".into())));
        assert!(fields.contains(&("vmalloc:alloc_vmap_area".into(), "failed".into())));
        assert_eq!(fields.len(), 17, "{fields:?}");
        // Linux 6.18's formats: the test data's, and the two free events' as they are here.
        let testdata =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../memtrace/testdata/linux-6.18");
        let format = |event: &str| {
            match event {
            "vmalloc:free_vmap_area_noflush" => Some(
                "name: free_vmap_area_noflush\nformat:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\n\tfield:unsigned long va_start;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:unsigned long nr_lazy;\toffset:16;\tsize:8;\tsigned:0;\n\tfield:unsigned long nr_lazy_max;\toffset:24;\tsize:8;\tsigned:0;\n".to_string(),
            ),
            "percpu:percpu_free_percpu" => Some(
                "name: percpu_free_percpu\nformat:\n\tfield:void * base_addr;\toffset:8;\tsize:8;\tsigned:0;\n\tfield:int off;\toffset:16;\tsize:4;\tsigned:1;\n\tfield:void __seg_gs * ptr;\toffset:24;\tsize:8;\tsigned:0;\n".to_string(),
            ),
            _ => std::fs::read_to_string(testdata.join(format!("{}.format", event.replace(':', "_")))).ok(),
        }
        };
        assert_eq!(
            missing_fields(&memleak_script(4096), format),
            Vec::<String>::new()
        );
        assert_eq!(
            missing_fields(BPFTRACE_SCRIPT, format),
            Vec::<String>::new()
        );
        // A field or an event the kernel lacks is named.
        let script = "tracepoint:kmem:kfree { @[args->ptr, args->nope] = count(); }\ntracepoint:kmem:gone { @x[args->a] = count(); }\n";
        assert_eq!(
            missing_fields(script, format),
            ["kmem:kfree args->nope", "kmem:gone args->a"]
        );
        // `char[] name`-style array fields count by their name.
        let array = "format:\n\tfield:__data_loc char[] name;\toffset:24;\tsize:4;\tsigned:0;\n";
        assert!(
            missing_fields("tracepoint:kmem:x { @[args->name] = count(); }", |_| Some(
                array.into()
            ))
            .is_empty()
        );
    }

    #[test]
    fn http_bodies_plain_chunked_and_refused() {
        assert_eq!(
            http_body(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n\x1f\x8b\x00").unwrap(),
            b"\x1f\x8b\x00"
        );
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\n\x1f\x8b\xff\r\n2;ext=1\r\n\r\n\r\n0\r\n\r\n";
        assert_eq!(http_body(chunked).unwrap(), b"\x1f\x8b\xff\r\n");
        let e = http_body(b"HTTP/1.1 404 Not Found\r\n\r\nheap profiling is off\n").unwrap_err();
        assert_eq!(e.to_string(), "HTTP/1.1 404 Not Found");
        assert!(http_body(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    /// A protobuf length-delimited field.
    fn field(number: u8, bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![(number << 3) | 2, bytes.len() as u8];
        v.extend_from_slice(bytes);
        v
    }

    /// A small pprof profile: two sample types, `samples` samples, a string table.
    fn pprof(samples: usize) -> Vec<u8> {
        let mut p = field(1, &[0x08, 0x01, 0x10, 0x02]);
        p.extend(field(1, &[0x08, 0x03, 0x10, 0x04]));
        for i in 0..samples {
            p.extend(field(2, &[0x0a, 0x01, 0x01, 0x12, 0x02, 0x01, i as u8]));
        }
        p.extend(field(6, b""));
        p.extend(field(6, b"space"));
        // time_nanos (field 9, a varint) and period (field 12)
        p.extend([9 << 3, 0x80, 0x01, 12 << 3, 0x80, 0x80, 0x20]);
        p
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut child = Command::new("gzip")
            .arg("-c")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(bytes).unwrap();
        child.wait_with_output().unwrap().stdout
    }

    #[test]
    fn heap_profiles_are_checked_to_be_gzipped_pprof() {
        assert_eq!(pprof_samples(&pprof(3)), Some(3));
        assert_eq!(pprof_samples(&pprof(0)), Some(0));
        assert_eq!(pprof_samples(&[0x12, 0x05, 0x01]), None, "truncated");
        assert_eq!(pprof_samples(&[0x0f]), None, "wire type 7");
        assert_eq!(check_heap_profile(&gzip(&pprof(5))).unwrap(), 5);
        assert_eq!(check_heap_profile(&gzip(&pprof(0))).unwrap(), 0);
        let refused = |bytes: &[u8]| format!("{:#}", check_heap_profile(bytes).unwrap_err());
        assert!(refused(b"").contains("not a gzip (0 bytes)"));
        assert!(refused(b"heap profiling is off: start the daemon").contains("not a gzip"));
        assert!(refused(&gzip(b"")).contains("an empty profile"));
        let mut corrupt = gzip(&pprof(5));
        let n = corrupt.len();
        corrupt[n - 6] ^= 0xff;
        assert!(refused(&corrupt).contains("corrupt gzip"));
        assert!(refused(&gzip(b"\xff\xff\xff")).contains("not a pprof"));
    }

    #[test]
    fn profile_samples_and_heap_profiles_are_reported() {
        let m = "# TYPE memtrace_profile_samples_total counter\nmemtrace_profile_samples_total{allocator=\"kmalloc\"} 30\nmemtrace_profile_samples_total{allocator=\"page\"} 12\nmemtrace_live_bytes{allocator=\"kmalloc\",function=\"f\"} 524288\n";
        assert_eq!(metric_total(m, "memtrace_profile_samples_total"), 42.0);
        assert_eq!(metric_total(m, "memtrace_profile_samples"), 0.0);
        // The profile's counters are not traced events.
        assert_eq!(traced_totals(m), (0, 0, 0));
        let run = |samples, bytes, live| Run {
            config: PROFILE.into(),
            seconds: 2.0,
            profile_samples: Some(samples),
            heap_profile_bytes: Some(bytes),
            heap_profile_samples: Some(live),
            ..Run::default()
        };
        let (a, b, c) = (run(2000, 900, 3), run(3000, 1100, 3), run(4000, 1000, 3));
        let note = heap_profile_note(&[&a, &b, &c]);
        assert!(note.contains("sampled 1500 allocations a second"), "{note}");
        assert!(
            note.contains("was 900–1100 bytes gzipped with 3 live samples"),
            "{note}"
        );
        assert!(heap_profile_note(&[]).contains("sampled — allocations"));
    }

    #[test]
    fn program_rows_set_the_profile_beside_the_default() {
        let p = Profiled {
            program: "kmalloc_btf_fixed".into(),
            runs: 1000,
            avg_ns: Some(86.0),
            floor_avg_ns: Some(51.0),
            verified_insns: Some(1164),
            profile_avg_ns: Some(95.4),
            profile_verified_insns: Some(1300),
            baseline_avg_ns: None,
            baseline_verified_insns: None,
            code_vs_baseline: None,
        };
        assert_eq!(
            program_row(&p, false),
            "| `kmalloc_btf_fixed` | 1000 | 86 | 51 | +35 | 1164 | 95 | +44 | 1300 |\n"
        );
        assert_eq!(
            program_row(&p, true),
            "| `kmalloc_btf_fixed` | 1000 | 86 | 51 | +35 | 1164 | 95 | +44 | 1300 | — | — | — | — |\n"
        );
        // A program only heap profiling loads.
        let only = Profiled {
            program: "percpu_free_percpu_btf".into(),
            avg_ns: None,
            floor_avg_ns: None,
            verified_insns: None,
            baseline_avg_ns: Some(40.0),
            baseline_verified_insns: Some(31),
            code_vs_baseline: Some("identical".into()),
            ..p
        };
        assert_eq!(
            program_row(&only, true),
            "| `percpu_free_percpu_btf` | 1000 | — | — | — | — | 95 | — | 1300 | 40 | — | 31 | identical |\n"
        );
        // New programs' names are profiled like the others (the tp_btf and classic ones).
        for name in ["free_vmap_area_noflush_btf", "percpu_free_percpu_tp"] {
            assert!(is_profiled(name), "{name}");
        }
        assert!(!is_profiled("percpu_free_percpu_raw"));
    }

    #[test]
    fn traced_totals_sum_event_counters() {
        let m = "# HELP x\nmemtrace_kmalloc_size_bytes_count{gfp=\"GFP_KERNEL\"} 10\nmemtrace_frees_total{allocator=\"kmalloc\"} 7\nmemtrace_kmalloc_size_bytes_sum{gfp=\"GFP_KERNEL\"} 999\nmemtrace_events_lost_total{reason=\"map_full\"} 2\nmemtrace_events_lost_total{reason=\"recursion\"} 5\n";
        assert_eq!(traced_totals(m), (17, 2, 5));
    }

    #[test]
    fn previous_run_is_compared_by_ratios() {
        let prev = serde_json::json!({
            "date": "d0", "commit": "abc", "reps": 5, "seconds": 2.0,
            "memtrace_added_vs_floor": 1.4, "memtrace_added_vs_bpftrace": 0.2,
            "full_added_vs_floor": 11.0,
            "programs": [{"program": "kmalloc_btf_fixed", "runs": 1, "avg_ns": 70.0,
                          "floor_avg_ns": 40.0, "verified_insns": 1164}],
        });
        let now = serde_json::json!({
            "commit": "def", "memtrace_added_vs_floor": 1.47, "memtrace_added_vs_bpftrace": 0.2,
            "full_added_vs_floor": 11.0,
            "programs": [{"program": "kmalloc_btf_fixed", "runs": 1, "avg_ns": 60.0,
                          "floor_avg_ns": 40.0, "verified_insns": 1164}],
        });
        let text = previous_section(&prev, &now, "old.json");
        assert!(
            text.contains("commit abc") && text.contains("commit def"),
            "{text}"
        );
        assert!(
            text.contains("× the floor's | 1.40 | 1.47 | 1.05× |"),
            "{text}"
        );
        assert!(
            text.contains("`kmalloc_btf_fixed`: ns per run over the floor | 30 | 20 |"),
            "{text}"
        );
        assert!(
            text.contains("`kmalloc_btf_fixed`: verified instructions | 1164 | 1164 | 1.00× |"),
            "{text}"
        );
        // A program the previous run lacks shows as unknown, not as zero.
        assert!(
            text.contains("`kfree_btf_fixed`: verified instructions | — | — | — |"),
            "{text}"
        );
        // A run from before heap profiles has no profile ratios: they show as unknown.
        assert!(
            text.contains("| memtrace-profile's, × memtrace's (default daemon) | — | — | — |"),
            "{text}"
        );
        let mut with_profile = now.clone();
        with_profile["profile_added_vs_memtrace"] = 1.1.into();
        with_profile["profile_added_vs_memleak"] = 0.12.into();
        let text = previous_section(&prev, &with_profile, "old.json");
        assert!(
            text.contains("| memtrace-profile's, × memtrace's (default daemon) | — | 1.10 | — |"),
            "{text}"
        );
        assert!(
            text.contains("| memtrace-profile's, × bpftrace-memleak's | — | 0.12 | — |"),
            "{text}"
        );
        let text = previous_section(&with_profile, &with_profile, "old.json");
        assert!(
            text.contains("| memtrace-profile's, × bpftrace-memleak's | 0.12 | 0.12 | 1.00× |"),
            "{text}"
        );
    }

    #[test]
    fn verified_code_is_compared_without_addresses() {
        let a = normalized_xlated(
            "int kfree_btf_fixed(unsigned long long * ctx):\n; if global(&HOOKS_ONLY) != 0 {\n   0: (18) r1 = map[id:12][0]+8\n   1: (85) call bpf_get_current_pid_tgid#239632\n   2: (18) r2 = 0xffff8881042a0a00\n",
        );
        let b = normalized_xlated(
            "int kfree_btf_fixed(unsigned long long * ctx):\n; if unsafe { read_volatile(&HOOKS_ONLY) } != 0 {\n   0: (18) r1 = map[id:40][0]+8\n   1: (85) call bpf_get_current_pid_tgid#239632\n   2: (18) r2 = 0xffff888100000000\n",
        );
        assert_eq!(a.len(), 4, "{a:?}");
        assert_eq!(compare_code(&a, &b), "identical");
        let swapped = normalized_xlated("0: (bf) r3 = r1\n1: (4f) r3 |= r2\n");
        let base = normalized_xlated("0: (bf) r3 = r2\n1: (4f) r3 |= r1\n");
        assert_eq!(
            compare_code(&base, &swapped),
            "same instructions, 2 of 2 with other stack slots or registers"
        );
        let longer = normalized_xlated("0: (bf) r3 = r2\n1: (4f) r3 |= r1\n2: (95) exit\n");
        assert!(compare_code(&base, &longer).starts_with("different: 3 instructions against 2"));
    }

    #[test]
    fn bad_previous_and_baseline_files_are_refused_before_measuring() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = read_previous(dir.join("nope.json")).unwrap_err();
        assert!(
            format!("{missing:#}").contains("cannot read it"),
            "{missing:#}"
        );
        for (name, text) in [("text", "not json"), ("other", "[1, 2]")] {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            let e = read_previous(p).unwrap_err();
            assert!(format!("{e:#}").contains("not a bench.json"), "{e:#}");
        }
        let good = dir.join("bench.json");
        std::fs::write(&good, r#"{"configs": {}, "date": "d"}"#).unwrap();
        assert!(read_previous(good.clone()).is_ok());
        let e = check_baseline(&dir.join("no-binary")).unwrap_err();
        assert!(e.to_string().contains("no such file"), "{e}");
        let e = check_baseline(&good).unwrap_err();
        assert!(e.to_string().contains("does not answer --version"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
