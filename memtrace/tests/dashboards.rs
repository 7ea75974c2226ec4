//! The Grafana dashboards in `dashboards/`: each is a dashboard Grafana can import (unique
//! uid and panel ids, panels on the grid, a data source variable, `job`/`instance` variables
//! that every query filters on, only metric names memtrace exports), the provisioning file
//! points where the README puts them, and every query of every panel, sent to a real
//! Prometheus that has scraped a real `memtrace daemon` under load, is valid PromQL and
//! returns data.

// The shared helpers in tests/support/. Dead code is linted per test binary, so each binary
// declares only the support modules it uses.
mod support {
    pub mod assert;
    pub mod compaction;
    pub mod daemon;
    pub mod http;
    pub mod kernel;
    pub mod memcg;
    pub mod prometheus;
    pub mod tools;
    pub mod worker;
    pub mod workload;
    pub mod xattr;
}

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{
    compaction::compact_memory,
    daemon::Daemon,
    http::free_port,
    kernel::require_kernel,
    memcg::{Memcg, force_failures},
    prometheus::{Prometheus, urlencode},
    tools::need,
    worker::Worker,
    workload::{
        BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY, bpf_map_create_close, open_close, pipe_pages,
    },
    xattr::setxattr_kmalloc,
};

const DS: &str = "${datasource}";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// Every `dashboards/*.json`, parsed, by file name.
fn dashboards() -> Vec<(String, Value)> {
    let dir = repo("dashboards");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            let json: Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{name} is not valid JSON: {e}"));
            (name, json)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    assert!(
        out.len() >= 4,
        "overview, pages, attribution and health dashboards: {:?}",
        out.iter().map(|d| &d.0).collect::<Vec<_>>()
    );
    out
}

/// Every panel, rows' collapsed panels included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("a panels array") {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// One query of one panel.
struct Query {
    dashboard: String,
    panel: String,
    expr: String,
    /// Grafana runs it once (`instant: true`), not over the time range.
    instant: bool,
}

fn queries(dashboards: &[(String, Value)]) -> Vec<Query> {
    let mut out = Vec::new();
    for (file, d) in dashboards {
        for p in panels(d) {
            for t in p["targets"].as_array().into_iter().flatten() {
                out.push(Query {
                    dashboard: file.clone(),
                    panel: p["title"].as_str().unwrap_or("?").to_string(),
                    expr: t["expr"].as_str().unwrap_or("").to_string(),
                    instant: t["instant"] == true,
                });
            }
        }
    }
    out
}

/// The metric selectors of a PromQL expression: each metric name with the text between the
/// braces that follow it (`None` when it has none). Function names, keywords, label lists
/// of `by`/`without`/`on`/`ignoring`/`group_*`, aggregation operators, strings, numbers, durations in `[...]` and
/// `$variables` are not metric names.
fn selectors(expr: &str) -> Vec<(String, Option<String>)> {
    const KEYWORDS: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "inf",
        "nan",
        // aggregation operators, which may be followed by `by (...)` before their `(`
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    let b = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let skip_ws = |mut j: usize| {
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        j
    };
    let close = |open: usize, end: u8| {
        let mut j = open + 1;
        let mut quoted = false;
        while j < b.len() {
            match b[j] {
                b'\\' if quoted => j += 1,
                b'"' => quoted = !quoted,
                c if c == end && !quoted => return j,
                _ => {}
            }
            j += 1;
        }
        panic!("unbalanced {:?} in {expr}", end as char)
    };
    while i < b.len() {
        let c = b[i];
        if c == b'"' {
            i = close(i, b'"') + 1;
        } else if c == b'[' {
            i = close(i, b']') + 1;
        } else if c == b'{' {
            // A selector without a metric name.
            let end = close(i, b'}');
            out.push((String::new(), Some(expr[i + 1..end].to_string())));
            i = end + 1;
        } else if c == b'$' || c.is_ascii_digit() || c == b'.' {
            i += 1;
            while i < b.len() && (ident(b[i]) || b[i] == b'.') {
                i += 1;
            }
        } else if ident(c) {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let next = skip_ws(i);
            if KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) {
                if [
                    "by",
                    "without",
                    "on",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&word)
                    && b.get(next) == Some(&b'(')
                {
                    i = close(next, b')') + 1;
                }
            } else if b.get(next) == Some(&b'(') {
                // a function
            } else if b.get(next) == Some(&b'{') {
                let end = close(next, b'}');
                out.push((word.to_string(), Some(expr[next + 1..end].to_string())));
                i = end + 1;
            } else {
                out.push((word.to_string(), None));
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The range windows (`[...]`, outside strings) of an expression.
fn ranges(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut quoted, mut escaped) = (false, false);
    let mut window: Option<String> = None;
    for c in expr.chars() {
        if let Some(w) = window.as_mut() {
            if c == ']' {
                out.push(window.take().unwrap());
            } else {
                w.push(c);
            }
        } else if escaped {
            escaped = false;
        } else if quoted && c == '\\' {
            escaped = true;
        } else if c == '"' {
            quoted = !quoted;
        } else if c == '[' && !quoted {
            window = Some(String::new());
        }
    }
    out
}

/// Metric names the README's Metrics table documents (histograms with their three series),
/// plus the per-target series Prometheus itself records.
fn documented_metrics() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(repo("README.md")).expect("README.md");
    let section = readme
        .split("\n## Metrics\n")
        .nth(1)
        .expect("a Metrics section in the README")
        .split("\n## ")
        .next()
        .unwrap();
    let mut names = BTreeSet::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').collect();
        let (first, kind) = (cells[1], cells[2].trim());
        for name in first.split('`').skip(1).step_by(2) {
            if kind == "histogram" {
                for s in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{s}"));
                }
            } else {
                names.insert(name.to_string());
            }
        }
    }
    assert!(
        names.len() > 30,
        "the Metrics table should document many metrics: {names:?}"
    );
    for prom in ["up", "scrape_duration_seconds", "scrape_samples_scraped"] {
        names.insert(prom.to_string());
    }
    names
}

/// Metrics no dashboard needs to show, with the reason.
const NOT_ON_A_DASHBOARD: &[(&str, &str)] = &[(
    "memtrace_cma_total_bytes",
    "absent without CMA (this machine has none), so no panel of it could be shown to return data",
)];

#[test]
fn dashboards_are_well_formed() {
    let all = dashboards();
    let documented = documented_metrics();
    let mut uids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut heatmap_of_kmalloc = false;
    for (file, d) in &all {
        let uid = d["uid"].as_str().unwrap_or("");
        assert!(
            !uid.is_empty() && uid.len() <= 40,
            "{file}: uid {uid:?} (1 to 40 characters)"
        );
        assert!(
            uids.insert(uid.to_string()),
            "{file}: uid {uid} is not unique"
        );
        let title = d["title"].as_str().unwrap_or("");
        assert!(!title.is_empty(), "{file}: no title");
        assert!(
            titles.insert(title.to_string()),
            "{file}: title {title} twice"
        );
        let schema = d["schemaVersion"].as_u64().unwrap_or(0);
        assert!(
            (36..=41).contains(&schema),
            "{file}: schemaVersion {schema}"
        );
        assert!(
            d["id"].is_null(),
            "{file}: an importable dashboard has id null"
        );
        assert!(
            d["tags"]
                .as_array()
                .is_some_and(|t| t.contains(&"memtrace".into())),
            "{file}: tagged memtrace (the dashboards link to each other by this tag)"
        );

        // Variables: the data source, then job and instance from memtrace_build_info.
        let vars: BTreeMap<&str, &Value> = d["templating"]["list"]
            .as_array()
            .unwrap_or_else(|| panic!("{file}: no templating list"))
            .iter()
            .map(|v| (v["name"].as_str().unwrap_or(""), v))
            .collect();
        let ds = vars
            .get("datasource")
            .unwrap_or_else(|| panic!("{file}: no datasource variable"));
        assert_eq!(ds["type"], "datasource", "{file}");
        assert_eq!(ds["query"], "prometheus", "{file}");
        for (name, filter) in [("job", None), ("instance", Some("$job"))] {
            let v = vars
                .get(name)
                .unwrap_or_else(|| panic!("{file}: no {name} variable"));
            assert_eq!(v["type"], "query", "{file}: {name}");
            assert_eq!(v["datasource"]["uid"], DS, "{file}: {name}");
            let q = variable_query(v);
            assert!(
                q.starts_with("label_values(memtrace_build_info")
                    && q.ends_with(&format!(", {name})")),
                "{file}: {name} comes from memtrace_build_info: {q}"
            );
            if let Some(f) = filter {
                assert!(q.contains(f), "{file}: {name} is filtered by {f}: {q}");
            }
            assert_eq!(v["multi"], true, "{file}: {name} is multi-value");
            assert_eq!(v["includeAll"], true, "{file}: {name} has All");
        }

        // Panels: unique ids, on the 24-column grid, not overlapping.
        let mut ids = BTreeSet::new();
        let mut boxes: Vec<(String, [u64; 4])> = Vec::new();
        for p in panels(d) {
            let title = p["title"].as_str().unwrap_or("");
            let id = p["id"]
                .as_u64()
                .unwrap_or_else(|| panic!("{file}: panel {title:?} has no id"));
            assert!(ids.insert(id), "{file}: panel id {id} twice ({title})");
            assert!(!title.is_empty(), "{file}: panel {id} has no title");
            let g = &p["gridPos"];
            let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| {
                g[k].as_u64()
                    .unwrap_or_else(|| panic!("{file}: {title}: gridPos.{k}"))
            });
            assert!(
                w >= 1 && h >= 1 && x + w <= 24,
                "{file}: {title}: gridPos {g} is off the grid"
            );
            for (other, [ox, oy, ow, oh]) in &boxes {
                assert!(
                    x >= ox + ow || ox >= &(x + w) || y >= oy + oh || oy >= &(y + h),
                    "{file}: {title} overlaps {other}"
                );
            }
            boxes.push((title.to_string(), [x, y, w, h]));
            if p["type"] == "row" {
                continue;
            }
            assert_eq!(p["datasource"]["uid"], DS, "{file}: {title}: datasource");
            let targets = p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            assert!(!targets.is_empty(), "{file}: {title} has no query");
            let mut refs = BTreeSet::new();
            for t in targets {
                let r = t["refId"].as_str().unwrap_or("");
                assert!(
                    !r.is_empty() && refs.insert(r),
                    "{file}: {title}: refId {r:?}"
                );
                assert_eq!(
                    t["datasource"]["uid"], DS,
                    "{file}: {title}: {r}: datasource"
                );
                let expr = t["expr"].as_str().unwrap_or("");
                assert!(!expr.trim().is_empty(), "{file}: {title}: {r}: no expr");
                check_expr(file, title, expr, &documented);
                for (name, _) in selectors(expr) {
                    used.insert(name);
                }
                if p["type"] == "heatmap"
                    && expr.contains("memtrace_kmalloc_size_bytes_bucket")
                    && t["format"] == "heatmap"
                {
                    heatmap_of_kmalloc = true;
                }
            }
        }
    }
    assert!(
        heatmap_of_kmalloc,
        "a heatmap panel of memtrace_kmalloc_size_bytes_bucket with format heatmap"
    );
    // Every documented metric is on some dashboard, unless it is exempt for a reason.
    let family = |n: &str| -> String {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| n.strip_suffix(s))
            .filter(|base| documented.contains(&format!("{base}_bucket")))
            .unwrap_or(n)
            .to_string()
    };
    let shown: BTreeSet<String> = used.iter().map(|u| family(u)).collect();
    let missing: BTreeSet<String> = documented
        .iter()
        .filter(|m| m.starts_with("memtrace_") || m.starts_with("process_"))
        .map(|m| family(m))
        .filter(|f| !shown.contains(f) && !NOT_ON_A_DASHBOARD.iter().any(|(n, _)| n == f))
        .collect();
    assert!(
        missing.is_empty(),
        "documented metrics on no dashboard: {missing:?}"
    );
}

/// The PromQL of a query variable (`query` as a string or as `{query: ...}`).
fn variable_query(v: &Value) -> String {
    v["query"]
        .as_str()
        .or_else(|| v["query"]["query"].as_str())
        .unwrap_or("")
        .to_string()
}

/// What every panel query must satisfy before it is run: each metric selector filters on
/// the job and instance variables, range windows come from Grafana (`$__rate_interval`, or
/// `$__range` for totals over the time range), and every metric name is documented.
fn check_expr(file: &str, title: &str, expr: &str, documented: &BTreeSet<String>) {
    let sels = selectors(expr);
    assert!(!sels.is_empty(), "{file}: {title}: no metric in {expr}");
    for (name, matchers) in &sels {
        let m = matchers.as_deref().unwrap_or("");
        assert!(
            m.contains(r#"job=~"$job""#) && m.contains(r#"instance=~"$instance""#),
            "{file}: {title}: {name} does not filter on job=~\"$job\", instance=~\"$instance\": {expr}"
        );
        assert!(
            documented.contains(name),
            "{file}: {title}: {name:?} is not a metric memtrace exports (README Metrics table): {expr}"
        );
    }
    for r in ranges(expr) {
        assert!(
            r == "$__rate_interval" || r == "$__range",
            "{file}: {title}: range [{r}]: use $__rate_interval (or $__range for a total): {expr}"
        );
    }
    if expr.contains("rate(") || expr.contains("increase(") {
        assert!(!ranges(expr).is_empty(), "{file}: {title}: {expr}");
    }
}

#[test]
fn the_expression_scanner_finds_every_selector() {
    let e = r#"topk($top, sum by (allocator, function) (rate(memtrace_callsite_allocations_total{job=~"$job", instance=~"$instance"}[$__rate_interval]))) / on (x) group_left (y) up"#;
    assert_eq!(
        selectors(e),
        [
            (
                "memtrace_callsite_allocations_total".to_string(),
                Some(r#"job=~"$job", instance=~"$instance""#.to_string())
            ),
            ("up".to_string(), None)
        ]
    );
    assert_eq!(ranges(e), ["$__rate_interval"]);
    let e = r#"histogram_quantile(0.99, sum by (le) (rate(m_bucket{a="}[0-2]"}[5m]))) - time() + {__name__="x"} or vector(1e-9)"#;
    assert_eq!(
        selectors(e),
        [
            ("m_bucket".to_string(), Some(r#"a="}[0-2]""#.to_string())),
            (String::new(), Some(r#"__name__="x""#.to_string()))
        ]
    );
    assert_eq!(ranges(e), ["5m"]);
}

#[test]
fn provisioning_points_at_the_dashboards() {
    let text = std::fs::read_to_string(repo("dashboards/provisioning/dashboards.yaml"))
        .expect("dashboards/provisioning/dashboards.yaml");
    let value = |key: &str| -> String {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{key}:")))
            .unwrap_or_else(|| panic!("dashboards.yaml has no {key}"))
            .trim()
            .to_string()
    };
    assert_eq!(value("apiVersion"), "1");
    assert_eq!(value("type"), "file");
    let path = value("path");
    assert!(path.starts_with('/'), "an absolute path: {path}");
    // The README copies the dashboards exactly there.
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let copy = format!("dashboards/*.json {path}/");
    assert!(
        readme.contains(&copy),
        "README.md copies the dashboards to the provider's path: `{copy}`"
    );
    let ds = std::fs::read_to_string(repo("dashboards/provisioning/datasource.yaml"))
        .expect("dashboards/provisioning/datasource.yaml");
    assert!(ds.contains("type: prometheus"), "{ds}");
}

/// Replaces Grafana's variables (`$name` and `${name}`, longest names first) with `vars`.
fn substitute(expr: &str, vars: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = expr.to_string();
    for n in names {
        out = out
            .replace(&format!("${{{n}}}"), &vars[n])
            .replace(&format!("${n}"), &vars[n]);
    }
    out
}

/// Drives every allocator until `stop`: kmalloc of several sizes (setxattr, 64 KiB values
/// also making order-4 pages), slab objects (open/close), order-0 pages (pipes), vmalloc
/// (a 256 KiB BPF array) and percpu (a per-CPU BPF array).
fn load(stop: Arc<AtomicBool>, file: PathBuf) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            for size in [24, 200, 1000, 3000, 65536] {
                setxattr_kmalloc(&file, size);
            }
            open_close(&file, 20);
            pipe_pages(16);
            bpf_map_create_close(BPF_MAP_TYPE_ARRAY, 1024, 256);
            bpf_map_create_close(BPF_MAP_TYPE_PERCPU_ARRAY, 8, 4);
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

#[test]
fn every_panel_query_returns_data_from_prometheus_scraping_a_loaded_daemon() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let Some(prometheus) = need("prometheus") else {
        return;
    };
    let all = dashboards();
    // Every optional series on, so that every panel has data.
    let daemon = Daemon::start_with(
        free_port(),
        &["--attribution.cgroups", "true", "--profile.enabled", "true"],
    );
    let instance = format!("127.0.0.1:{}", daemon.port);
    let server = Prometheus::start(&prometheus, std::slice::from_ref(&instance));
    let started = Instant::now();

    let dir = std::env::temp_dir().join(format!("memtrace-dashboards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("f");
    std::fs::write(&file, b"x").unwrap();
    compact_memory();
    let stop = Arc::new(AtomicBool::new(false));
    let loader = load(stop.clone(), file.clone());
    server.wait_up(1);

    // Real failures, twice a few scrapes apart so their rate is not zero: 64 KiB xattrs on
    // tmpfs from a thread in a memory cgroup with a 64 KiB limit (kmalloc and page failures).
    let shm = Path::new("/dev/shm");
    assert!(shm.is_dir(), "the failure workload needs tmpfs at /dev/shm");
    let shm_file = shm.join(format!("memtrace-dashboards-{}", std::process::id()));
    std::fs::write(&shm_file, b"x").unwrap();
    {
        let memcg = Memcg::new(64 << 10);
        let worker = Worker::spawn();
        force_failures(&worker, &memcg, &shm_file, 3);
        std::thread::sleep(Duration::from_secs(4));
        force_failures(&worker, &memcg, &shm_file, 3);
    }
    let _ = std::fs::remove_file(&shm_file);

    // Every rate window must hold enough samples under load: 15 s of 1 s scrapes.
    std::thread::sleep(Duration::from_secs(15));
    let rate_interval = "30s";
    let range = format!("{}s", started.elapsed().as_secs() + 10);

    // Scraped names: every metric a panel names must be in a real scrape too.
    let scraped: BTreeSet<String> =
        memtrace::export::scrape::parse_exposition(&daemon.scrape_text())
            .into_iter()
            .map(|s| s.name)
            .collect();
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    vars.insert("job".into(), "memtrace".into());
    vars.insert("instance".into(), instance.clone());
    vars.insert("__rate_interval".into(), rate_interval.into());
    vars.insert("__interval".into(), "1s".into());
    vars.insert("__range".into(), range.clone());
    vars.insert("datasource".into(), "prometheus".into());

    let mut failures = Vec::new();
    let mut checked = 0;
    for (file, d) in &all {
        // Variables: custom ones take their current value; query ones must find this
        // daemon's job and instance.
        let mut vars = vars.clone();
        for v in d["templating"]["list"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or("");
            match v["type"].as_str() {
                Some("custom" | "constant" | "textbox") => {
                    let cur = v["current"]["value"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{file}: variable {name} has no current value"));
                    vars.insert(name.into(), cur.into());
                }
                Some("query") => {
                    let q = substitute(&variable_query(v), &vars);
                    let inner = q
                        .strip_prefix("label_values(")
                        .and_then(|r| r.strip_suffix(')'))
                        .unwrap_or_else(|| panic!("{file}: {name}: {q}"));
                    let (series, label) = inner.rsplit_once(',').unwrap();
                    let path = format!(
                        "/api/v1/label/{}/values?{}={}",
                        label.trim(),
                        urlencode("match[]"),
                        urlencode(series.trim())
                    );
                    let got = server.api(&path);
                    let want = vars[name].clone();
                    if !got["data"]
                        .as_array()
                        .is_some_and(|a| a.iter().any(|x| x == &Value::from(want.clone())))
                    {
                        failures.push(format!("{file}: variable {name} ({q}) lacks {want}: {got}"));
                    }
                }
                _ => {}
            }
        }
        for q in queries(std::slice::from_ref(&(file.clone(), d.clone()))) {
            let expr = substitute(&q.expr, &vars);
            let what = format!("{}: panel {:?}: {}", q.dashboard, q.panel, q.expr);
            assert!(
                !expr.contains('$'),
                "{what}: a variable the test does not know"
            );
            for (name, _) in selectors(&expr) {
                if name != "up" && !name.starts_with("scrape_") && !scraped.contains(&name) {
                    failures.push(format!("{what}: {name} is not in a real scrape"));
                }
            }
            // As Grafana asks: an instant query, and for a graph a range query too (the
            // last 20 s at a 1 s step).
            let mut asks = vec![(
                "instant",
                format!("/api/v1/query?query={}", urlencode(&expr)),
            )];
            if !q.instant {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                asks.push((
                    "range",
                    format!(
                        "/api/v1/query_range?query={}&start={}&end={now}&step=1",
                        urlencode(&expr),
                        now - 20
                    ),
                ));
            }
            for (kind, path) in asks {
                let v = server.api(&path);
                checked += 1;
                if v["status"] != "success" {
                    failures.push(format!("{what}: {kind} query: {v}"));
                    continue;
                }
                let result = &v["data"]["result"];
                let series = result.as_array().map(Vec::len).unwrap_or(1);
                let values: Vec<&str> = match v["data"]["resultType"].as_str() {
                    Some("vector") => result
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|s| s["value"][1].as_str())
                        .collect(),
                    Some("matrix") => result
                        .as_array()
                        .into_iter()
                        .flatten()
                        .flat_map(|s| s["values"].as_array().into_iter().flatten())
                        .filter_map(|p| p[1].as_str())
                        .collect(),
                    Some("scalar") => result[1].as_str().into_iter().collect(),
                    _ => Vec::new(),
                };
                eprintln!(
                    "{}: {:?}: {kind}: {series} series, {} values, last {:?}",
                    q.dashboard,
                    q.panel,
                    values.len(),
                    values.last()
                );
                if values.is_empty() {
                    failures.push(format!("{what}: {kind} query: no data ({expr})"));
                } else if !values
                    .iter()
                    .any(|x| x.parse::<f64>().is_ok_and(f64::is_finite))
                {
                    failures.push(format!("{what}: {kind} query: only {values:?} ({expr})"));
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    loader.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "{checked} queries (instant, and range for graphs) checked against Prometheus ({rate_interval} rate windows, range {range})"
    );
    assert!(checked > 100, "the dashboards have many queries: {checked}");
    assert!(
        failures.is_empty(),
        "{} of {checked} queries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    daemon.terminate();
}
