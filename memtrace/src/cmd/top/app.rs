//! The state of `memtrace top` apart from any terminal: two successive models give rates;
//! views, sorting, filtering, selection and keys are plain data, tested without a screen.
//! The full-screen view and the batch output both draw what this module computes.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use memtrace_common::Allocator;

use super::model::{self, Histogram, Model, allocator_named, increase};
pub use crate::cmd::units::{fmt_bytes, fmt_bytes_rate, scaled_bytes};
use crate::export::record::EventRecord;
use crate::profile::growth::Series;

/// The tables `top` can show (`Tab` cycles through them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum View {
    /// Allocations per calling kernel function.
    Callsites,
    /// Allocations per slab cache.
    Caches,
    /// Allocations per task name and allocator.
    Processes,
    /// Page allocations per order and migrate type.
    Pages,
    /// vmalloc: who reserves address space, and the size histogram.
    Vmalloc,
    /// The heap profile: live bytes per calling function, how fast they grow, the age of the
    /// oldest live allocation, and whether the growth is steady (a leak suspect).
    Live,
}

impl View {
    pub const ALL: [View; 6] = [
        View::Callsites,
        View::Caches,
        View::Processes,
        View::Pages,
        View::Vmalloc,
        View::Live,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Callsites => "Call sites",
            View::Caches => "Slab caches",
            View::Processes => "Processes",
            View::Pages => "Page orders × migrate type",
            View::Vmalloc => "vmalloc",
            View::Live => "Live bytes (heap profile)",
        }
    }

    fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    pub fn next(self) -> View {
        View::ALL[(self.index() + 1) % View::ALL.len()]
    }

    pub fn prev(self) -> View {
        View::ALL[(self.index() + View::ALL.len() - 1) % View::ALL.len()]
    }
}

/// What the table is sorted by (`s` cycles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SortKey {
    /// Allocations per second.
    Rate,
    /// Bytes per second.
    Bytes,
    /// Failures.
    Failures,
}

impl SortKey {
    pub fn next(self) -> SortKey {
        match self {
            SortKey::Rate => SortKey::Bytes,
            SortKey::Bytes => SortKey::Failures,
            SortKey::Failures => SortKey::Rate,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SortKey::Rate => "allocations/s",
            SortKey::Bytes => "bytes/s",
            SortKey::Failures => "failures",
        }
    }
}

/// Per allocator, for the header.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocatorLine {
    pub allocator: &'static str,
    pub rate: f64,
    pub bytes_rate: f64,
    pub failures: f64,
    pub failures_rate: f64,
}

/// The header's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub allocators: Vec<AllocatorLine>,
    /// Slab rounding waste: (allocated − requested) / allocated over kmalloc and slab caches,
    /// in the last interval (since start before a second refresh).
    pub waste_percent: Option<f64>,
    pub failures: f64,
    pub lost: f64,
    pub probes_attached: usize,
    pub probes_total: usize,
    pub vmalloc_used_bytes: Option<f64>,
    pub vmalloc_total_bytes: Option<f64>,
}

/// A table ready to print: header cells and formatted rows, in display order.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub title: String,
    pub columns: Vec<String>,
    /// Whether each column holds numbers (right-aligned).
    pub numeric: Vec<bool>,
    pub rows: Vec<Vec<String>>,
    /// Rows before filtering.
    pub unfiltered: usize,
}

/// The histogram (or note) beside the table, for the selected row.
#[derive(Debug, Clone, PartialEq)]
pub struct Detail {
    pub title: String,
    /// (label, value, formatted value).
    pub bars: Vec<(String, f64, String)>,
    pub highlight: Option<usize>,
    pub note: Option<String>,
}

/// One row before formatting.
#[derive(Debug, Clone)]
struct Row {
    cells: Vec<String>,
    rate: f64,
    bytes_rate: f64,
    total: f64,
    failures: f64,
    /// What the detail pane shows for this row.
    key: RowKey,
}

#[derive(Debug, Clone, PartialEq)]
enum RowKey {
    Allocator(Allocator),
    Cache(String),
    Order(u32),
}

/// What a key press asks of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
}

/// Failures kept for the "latest failures" pane.
const RECENT_FAILURES: usize = 100;

pub struct App {
    pub view: View,
    pub sort: SortKey,
    /// The applied filter (case-insensitive substring of a row's text).
    pub filter: String,
    /// The filter being typed after `/`, until Enter or Esc.
    pub editing: Option<String>,
    pub paused: bool,
    pub help: bool,
    pub selected: usize,
    /// Where the numbers come from (`this process` or the daemon's URL).
    pub source: String,
    /// The last refresh's error, shown until a refresh succeeds.
    pub error: Option<String>,
    prev: Option<Model>,
    cur: Model,
    /// Seconds between `prev` and `cur`.
    elapsed: f64,
    refreshes: u64,
    recent: VecDeque<EventRecord>,
    /// Failures seen since `top` started, by (allocator, function) and (allocator, comm).
    failed_sites: BTreeMap<(Allocator, String), f64>,
    failed_comms: BTreeMap<(Allocator, String), f64>,
    /// Seconds since the first refresh.
    clock: f64,
    /// Each function's live bytes at recent refreshes (the leak test's window).
    live_history: BTreeMap<(Allocator, String), Series>,
}

/// Refreshes in each function's live-bytes window.
const LIVE_WINDOW: usize = 60;

impl App {
    pub fn new(source: String, view: View, sort: SortKey, filter: String) -> App {
        App {
            view,
            sort,
            filter,
            editing: None,
            paused: false,
            help: false,
            selected: 0,
            source,
            error: None,
            prev: None,
            cur: Model::default(),
            elapsed: 0.0,
            refreshes: 0,
            recent: VecDeque::new(),
            failed_sites: BTreeMap::new(),
            failed_comms: BTreeMap::new(),
            clock: 0.0,
            live_history: BTreeMap::new(),
        }
    }

    /// Takes a new model, `elapsed` seconds after the previous one, and the failures seen
    /// since.
    pub fn update(&mut self, model: Model, elapsed: f64, failures: Vec<EventRecord>) {
        let prev = std::mem::replace(&mut self.cur, model);
        if self.refreshes > 0 {
            self.prev = Some(prev);
            self.elapsed = elapsed;
        }
        self.refreshes += 1;
        self.error = None;
        if self.refreshes > 1 {
            self.clock += elapsed;
        }
        // A function that left the profile has nothing live: its window records 0.
        for (k, h) in &mut self.live_history {
            if !self.cur.live.contains_key(k) {
                h.push(self.clock, 0.0, LIVE_WINDOW);
            }
        }
        for (k, (bytes, _)) in &self.cur.live {
            self.live_history
                .entry(k.clone())
                .or_default()
                .push(self.clock, *bytes, LIVE_WINDOW);
        }
        for r in failures.into_iter().filter(|r| r.kind == "failure") {
            if let Some(a) = allocator_named(&r.allocator) {
                if let Some(site) = &r.call_site {
                    let f = site.split('+').next().unwrap_or(site).to_string();
                    *self.failed_sites.entry((a, f)).or_default() += 1.0;
                }
                *self.failed_comms.entry((a, r.comm.clone())).or_default() += 1.0;
            }
            if self.recent.len() == RECENT_FAILURES {
                self.recent.pop_front();
            }
            self.recent.push_back(r);
        }
    }

    /// Whether rates are known (two refreshes so far).
    pub fn has_rates(&self) -> bool {
        self.prev.is_some() && self.elapsed > 0.0
    }

    /// The increase of a counter per second over the last interval (0 before two refreshes).
    fn rate(&self, now: f64, before: impl FnOnce(&Model) -> f64) -> f64 {
        match &self.prev {
            Some(p) if self.elapsed > 0.0 => increase(before(p), now) / self.elapsed,
            _ => 0.0,
        }
    }

    pub fn header(&self) -> Header {
        let mut allocators = Vec::new();
        let mut failures = 0.0;
        for a in Allocator::ALL {
            let t = self.cur.totals(a);
            failures += t.failures;
            allocators.push(AllocatorLine {
                allocator: a.name(),
                rate: self.rate(t.allocations, |p| p.totals(a).allocations),
                bytes_rate: self.rate(t.allocated_bytes, |p| p.totals(a).allocated_bytes),
                failures: t.failures,
                failures_rate: self.rate(t.failures, |p| p.totals(a).failures),
            });
        }
        // Waste over the last interval, or since start before rates are known.
        let (mut alloc, mut req) = (0.0, 0.0);
        for a in [Allocator::Kmalloc, Allocator::KmemCache] {
            let t = self.cur.totals(a);
            let Some(r) = t.requested_bytes else { continue };
            match &self.prev {
                Some(p) if self.has_rates() => {
                    let pt = p.totals(a);
                    alloc += increase(pt.allocated_bytes, t.allocated_bytes);
                    req += increase(pt.requested_bytes.unwrap_or(0.0), r);
                }
                _ => {
                    alloc += t.allocated_bytes;
                    req += r;
                }
            }
        }
        Header {
            allocators,
            waste_percent: (alloc > 0.0).then(|| ((alloc - req).max(0.0) / alloc) * 100.0),
            failures,
            lost: self.cur.lost.values().sum(),
            probes_attached: self.cur.probes_attached,
            probes_total: self.cur.probes_total,
            vmalloc_used_bytes: self.cur.vmalloc_used_bytes,
            vmalloc_total_bytes: self.cur.vmalloc_total_bytes,
        }
    }

    fn usage_rows(
        &self,
        now: &BTreeMap<(Allocator, String), model::Usage>,
        before: impl Fn(&Model) -> &BTreeMap<(Allocator, String), model::Usage>,
        failed: &BTreeMap<(Allocator, String), f64>,
        only: Option<Allocator>,
    ) -> Vec<Row> {
        now.iter()
            .filter(|((a, _), _)| only.is_none_or(|o| o == *a))
            .map(|(k, u)| {
                let prev = |p: &Model| before(p).get(k).copied().unwrap_or_default();
                let rate = self.rate(u.allocations, |p| prev(p).allocations);
                let bytes_rate = self.rate(u.bytes, |p| prev(p).bytes);
                let fails = failed.get(k).copied().unwrap_or(0.0);
                let avg = if u.allocations > 0.0 {
                    fmt_bytes(u.bytes / u.allocations)
                } else {
                    "-".into()
                };
                let mut cells = Vec::new();
                if only.is_none() {
                    cells.push(k.0.name().to_string());
                }
                cells.extend([
                    k.1.clone(),
                    fmt_rate(rate),
                    fmt_bytes_rate(bytes_rate),
                    fmt_count(u.allocations),
                    fmt_bytes(u.bytes),
                    avg,
                    fmt_count(fails),
                ]);
                Row {
                    cells,
                    rate,
                    bytes_rate,
                    total: u.allocations,
                    failures: fails,
                    key: RowKey::Allocator(k.0),
                }
            })
            .collect()
    }

    fn rows(&self) -> (Vec<&'static str>, Vec<bool>, Vec<Row>) {
        let usage_columns = |first: &'static str| {
            (
                vec![
                    "ALLOCATOR",
                    first,
                    "ALLOCS/S",
                    "BYTES/S",
                    "ALLOCS",
                    "BYTES",
                    "AVG",
                    "FAILS",
                ],
                vec![false, false, true, true, true, true, true, true],
            )
        };
        match self.view {
            View::Callsites => {
                let (c, n) = usage_columns("FUNCTION");
                let rows = self.usage_rows(
                    &self.cur.callsites,
                    |p| &p.callsites,
                    &self.failed_sites,
                    None,
                );
                (c, n, rows)
            }
            View::Processes => {
                let (c, n) = usage_columns("COMM");
                let rows = self.usage_rows(
                    &self.cur.processes,
                    |p| &p.processes,
                    &self.failed_comms,
                    None,
                );
                (c, n, rows)
            }
            View::Vmalloc => {
                let (mut c, mut n) = usage_columns("COMM");
                c.remove(0);
                n.remove(0);
                let rows = self.usage_rows(
                    &self.cur.processes,
                    |p| &p.processes,
                    &self.failed_comms,
                    Some(Allocator::Vmalloc),
                );
                (c, n, rows)
            }
            View::Caches => {
                let rows = self
                    .cur
                    .caches
                    .iter()
                    .map(|(name, c)| {
                        let prev = |p: &Model| p.caches.get(name).copied().unwrap_or_default();
                        let rate = self.rate(c.allocations, |p| prev(p).allocations);
                        let bytes_rate = self.rate(c.allocated_bytes, |p| prev(p).allocated_bytes);
                        let (obj, waste) = if c.allocations > 0.0 && c.allocated_bytes > 0.0 {
                            (
                                fmt_bytes(c.allocated_bytes / c.allocations),
                                format!(
                                    "{:.1}%",
                                    (c.allocated_bytes - c.requested_bytes).max(0.0)
                                        / c.allocated_bytes
                                        * 100.0
                                ),
                            )
                        } else {
                            ("-".into(), "-".into())
                        };
                        Row {
                            cells: vec![
                                name.clone(),
                                fmt_rate(rate),
                                fmt_bytes_rate(bytes_rate),
                                fmt_count(c.allocations),
                                fmt_bytes(c.allocated_bytes),
                                obj,
                                waste,
                            ],
                            rate,
                            bytes_rate,
                            total: c.allocations,
                            failures: 0.0,
                            key: RowKey::Cache(name.clone()),
                        }
                    })
                    .collect();
                (
                    vec![
                        "CACHE", "ALLOCS/S", "BYTES/S", "ALLOCS", "BYTES", "OBJECT", "WASTE",
                    ],
                    vec![false, true, true, true, true, true, true],
                    rows,
                )
            }
            View::Pages => self.page_rows(),
            View::Live => self.live_rows(),
        }
    }

    /// The live view: one row per (allocator, function) of the heap profile.
    fn live_rows(&self) -> (Vec<&'static str>, Vec<bool>, Vec<Row>) {
        let rows = self
            .cur
            .live
            .iter()
            .map(|(k, (bytes, oldest))| {
                let history = self.live_history.get(k);
                let trend = history.and_then(Series::trend);
                let slope = trend.map_or(0.0, |t| t.slope);
                // Steady growth of at least a default sample's two samples' worth.
                let steady = history.and_then(|h| h.suspect(2.0 * 512.0 * 1024.0));
                Row {
                    cells: vec![
                        k.0.name().to_string(),
                        k.1.clone(),
                        fmt_bytes(*bytes),
                        if slope < 0.0 {
                            format!("-{}", fmt_bytes_rate(-slope))
                        } else {
                            fmt_bytes_rate(slope)
                        },
                        trend.map_or("-".into(), |t| format!("{:.0}s", t.span)),
                        oldest.map_or("-".into(), |a| format!("{a:.0}s")),
                        if steady.is_some() { "yes" } else { "" }.to_string(),
                    ],
                    rate: slope,
                    bytes_rate: slope,
                    total: *bytes,
                    failures: 0.0,
                    key: RowKey::Allocator(k.0),
                }
            })
            .collect();
        (
            vec![
                "ALLOCATOR",
                "FUNCTION",
                "LIVE",
                "GROWTH/S",
                "WINDOW",
                "OLDEST",
                "STEADY",
            ],
            vec![false, false, true, true, true, true, false],
            rows,
        )
    }

    fn migratetypes(&self) -> Vec<String> {
        let set: BTreeSet<&String> = self.cur.pages.keys().map(|(_, mt)| mt).collect();
        set.into_iter().cloned().collect()
    }

    fn page_rows(&self) -> (Vec<&'static str>, Vec<bool>, Vec<Row>) {
        let mts = self.migratetypes();
        let orders: BTreeSet<u32> = self
            .cur
            .pages
            .keys()
            .map(|(o, _)| *o)
            .chain(self.cur.page_failures.keys().copied())
            .collect();
        let rows = orders
            .into_iter()
            .map(|order| {
                let count = |m: &Model| -> f64 {
                    m.pages
                        .iter()
                        .filter(|((o, _), _)| *o == order)
                        .map(|(_, n)| n)
                        .sum()
                };
                let total = count(&self.cur);
                let rate = self.rate(total, count);
                let block = self.cur.page_size * f64::from(1u32 << order.min(31));
                let fails = self.cur.page_failures.get(&order).copied().unwrap_or(0.0);
                let frees = self.cur.page_frees.get(&order).copied().unwrap_or(0.0);
                let frees_rate =
                    self.rate(frees, |p| p.page_frees.get(&order).copied().unwrap_or(0.0));
                let mut cells = vec![
                    order.to_string(),
                    fmt_bytes(block),
                    fmt_rate(rate),
                    fmt_bytes_rate(rate * block),
                ];
                for mt in &mts {
                    let k = (order, mt.clone());
                    let n = self.cur.pages.get(&k).copied().unwrap_or(0.0);
                    cells.push(fmt_rate(
                        self.rate(n, |p| p.pages.get(&k).copied().unwrap_or(0.0)),
                    ));
                }
                cells.extend([fmt_count(total), fmt_count(fails), fmt_rate(frees_rate)]);
                Row {
                    cells,
                    rate,
                    bytes_rate: rate * block,
                    total,
                    failures: fails,
                    key: RowKey::Order(order),
                }
            })
            .collect();
        // Migrate-type columns carry their own names: leak them to get 'static headers.
        let mut columns: Vec<&'static str> = vec!["ORDER", "BLOCK", "ALLOCS/S", "BYTES/S"];
        let mut numeric = vec![true; 4];
        for mt in mts {
            columns.push(intern(&mt));
            numeric.push(true);
        }
        columns.extend(["ALLOCS", "FAILS", "FREES/S"]);
        numeric.extend([true; 3]);
        (columns, numeric, rows)
    }

    /// The rows of the current view, filtered and sorted.
    fn sorted_rows(&self) -> (Vec<&'static str>, Vec<bool>, Vec<Row>, usize) {
        let (columns, numeric, mut rows) = self.rows();
        let unfiltered = rows.len();
        if !self.filter.is_empty() {
            let needle = self.filter.to_lowercase();
            rows.retain(|r| r.cells.iter().any(|c| c.to_lowercase().contains(&needle)));
        }
        let key = |r: &Row| match self.sort {
            SortKey::Rate => (r.rate, r.total),
            SortKey::Bytes => (r.bytes_rate, r.total),
            SortKey::Failures => (r.failures, r.rate),
        };
        rows.sort_by(|a, b| {
            let (ka, kb) = (key(a), key(b));
            kb.0.total_cmp(&ka.0)
                .then(kb.1.total_cmp(&ka.1))
                .then_with(|| a.cells.cmp(&b.cells))
        });
        // Page orders read best in order when nothing distinguishes them.
        if self.view == View::Pages && rows.iter().all(|r| key(r).0 == 0.0 && key(r).1 == 0.0) {
            rows.sort_by_key(|r| match r.key {
                RowKey::Order(o) => o,
                _ => 0,
            });
        }
        (columns, numeric, rows, unfiltered)
    }

    /// The current view as a table: every matching row, sorted.
    pub fn table(&self) -> Table {
        let (columns, numeric, rows, unfiltered) = self.sorted_rows();
        let mut title = format!("{} — sorted by {}", self.view.title(), self.sort.name());
        if !self.filter.is_empty() {
            title.push_str(&format!(" — filter \"{}\"", self.filter));
        }
        if !self.has_rates() {
            title.push_str(" — rates after the second refresh");
        }
        if self.view == View::Live && self.cur.live.is_empty() {
            title.push_str(" — nothing live yet (a daemon needs --profile.enabled true)");
        }
        Table {
            title,
            columns: columns.into_iter().map(str::to_string).collect(),
            numeric,
            rows: rows.into_iter().map(|r| r.cells).collect(),
            unfiltered,
        }
    }

    /// The selected row's index, kept within the table.
    pub fn selection(&self, len: usize) -> Option<usize> {
        (len > 0).then(|| self.selected.min(len - 1))
    }

    /// The histogram of the selected row: its own distribution where memtrace keeps one.
    pub fn detail(&self) -> Detail {
        let (_, _, rows, _) = self.sorted_rows();
        let Some(row) = self.selection(rows.len()).map(|i| &rows[i]) else {
            return Detail {
                title: "Sizes".into(),
                bars: vec![],
                highlight: None,
                note: Some("no row selected".into()),
            };
        };
        let per = if self.has_rates() { "/s" } else { "" };
        match &row.key {
            RowKey::Allocator(a) => {
                let a = *a;
                let Some(h) = self.cur.sizes(a) else {
                    return Detail {
                        title: format!("{} sizes", a.name()),
                        bars: vec![],
                        highlight: None,
                        note: Some(match a {
                            Allocator::KmemCache => {
                                "slab objects have their cache's fixed size: see the caches view"
                                    .into()
                            }
                            Allocator::Page => "page blocks by order: see the pages view".into(),
                            _ => "memtrace keeps no size histogram for this allocator".into(),
                        }),
                    };
                };
                let h = self.interval_histogram(h, |m| m.sizes(a));
                let scope = if self.view == View::Vmalloc {
                    "all vmalloc"
                } else {
                    "all callers; memtrace keeps sizes per allocator"
                };
                // Only the span of buckets that hold something (at least one bucket).
                let first = h.buckets.iter().position(|b| b.1 > 0.0).unwrap_or(0);
                let last = h.buckets.iter().rposition(|b| b.1 > 0.0).unwrap_or(0);
                let shown = h.buckets.get(first..=last).unwrap_or(&h.buckets[..]);
                Detail {
                    title: format!("{} sizes{per} ({scope})", a.name()),
                    bars: shown
                        .iter()
                        .map(|(le, n)| {
                            (
                                bucket_label(*le),
                                *n / self.per_second(),
                                fmt_count(*n / self.per_second()),
                            )
                        })
                        .collect(),
                    highlight: None,
                    note: None,
                }
            }
            RowKey::Cache(name) => {
                let c = self.cur.caches.get(name).copied().unwrap_or_default();
                let obj = if c.allocations > 0.0 {
                    c.allocated_bytes / c.allocations
                } else {
                    0.0
                };
                let req = if c.allocations > 0.0 {
                    c.requested_bytes / c.allocations
                } else {
                    0.0
                };
                Detail {
                    title: format!("{name}: object size"),
                    bars: vec![
                        ("requested".into(), req, fmt_bytes(req)),
                        ("allocated".into(), obj, fmt_bytes(obj)),
                    ],
                    highlight: Some(1),
                    note: Some(format!(
                        "every object is {}; {} of it is rounding and metadata",
                        fmt_bytes(obj),
                        fmt_bytes((obj - req).max(0.0))
                    )),
                }
            }
            RowKey::Order(order) => {
                let bars = self
                    .migratetypes()
                    .into_iter()
                    .map(|mt| {
                        let k = (*order, mt.clone());
                        let n = self.cur.pages.get(&k).copied().unwrap_or(0.0);
                        let v = if self.has_rates() {
                            self.rate(n, |p| p.pages.get(&k).copied().unwrap_or(0.0))
                        } else {
                            n
                        };
                        (mt, v, fmt_count(v))
                    })
                    .collect();
                Detail {
                    title: format!("order {order} allocations{per} by migrate type"),
                    bars,
                    highlight: None,
                    note: None,
                }
            }
        }
    }

    /// Seconds the detail's counts are divided by (1 before rates are known).
    fn per_second(&self) -> f64 {
        if self.has_rates() { self.elapsed } else { 1.0 }
    }

    fn interval_histogram(
        &self,
        now: &Histogram,
        of: impl Fn(&Model) -> Option<&Histogram>,
    ) -> Histogram {
        match (&self.prev, self.has_rates()) {
            (Some(p), true) => now.since(of(p).unwrap_or(&Histogram::default())),
            _ => now.clone(),
        }
    }

    /// The latest failures, newest first.
    pub fn failures(&self) -> impl Iterator<Item = &EventRecord> {
        self.recent.iter().rev()
    }

    /// Handles a key; returns what the caller should do.
    pub fn on_key(&mut self, key: KeyEvent) -> Action {
        if key.kind == KeyEventKind::Release {
            return Action::None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        if let Some(text) = &mut self.editing {
            match key.code {
                KeyCode::Enter => {
                    self.filter = self.editing.take().unwrap_or_default();
                    self.selected = 0;
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) if !c.is_control() && text.chars().count() < 64 => text.push(c),
                _ => {}
            }
            return Action::None;
        }
        if self.help {
            // Any key closes the help; q still quits.
            self.help = false;
            return if key.code == KeyCode::Char('q') {
                Action::Quit
            } else {
                Action::None
            };
        }
        match key.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Esc if !self.filter.is_empty() => self.filter.clear(),
            KeyCode::Esc => return Action::Quit,
            KeyCode::Tab | KeyCode::Right => {
                self.view = self.view.next();
                self.selected = 0;
            }
            KeyCode::BackTab | KeyCode::Left => {
                self.view = self.view.prev();
                self.selected = 0;
            }
            KeyCode::Char(c @ '1'..='6') => {
                self.view = View::ALL[c as usize - '1' as usize];
                self.selected = 0;
            }
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('p') | KeyCode::Char(' ') => self.paused = !self.paused,
            KeyCode::Char('/') => self.editing = Some(self.filter.clone()),
            KeyCode::Char('?') | KeyCode::Char('h') => self.help = true,
            KeyCode::Down | KeyCode::Char('j') => self.selected = self.selected.saturating_add(1),
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::PageDown => self.selected = self.selected.saturating_add(10),
            KeyCode::PageUp => self.selected = self.selected.saturating_sub(10),
            KeyCode::Home | KeyCode::Char('g') => self.selected = 0,
            KeyCode::End | KeyCode::Char('G') => self.selected = usize::MAX,
            _ => {}
        }
        Action::None
    }

    /// Clamps the selection to the current table (after keys or a refresh).
    pub fn clamp_selection(&mut self) {
        let len = self.sorted_rows().2.len();
        self.selected = self.selection(len).unwrap_or(0);
    }
}

/// Keys, for the help screen and the status line.
pub const HELP: &[(&str, &str)] = &[
    ("q, Esc, Ctrl-C", "quit"),
    (
        "Tab, Shift-Tab, 1-6",
        "switch view: call sites, caches, processes, pages, vmalloc",
    ),
    ("s", "sort by allocations/s, bytes/s, failures"),
    ("p, Space", "pause / resume refreshing"),
    (
        "/",
        "filter rows (Enter applies, Esc cancels; empty clears)",
    ),
    (
        "↑ ↓ j k PgUp PgDn",
        "select a row: its size histogram is shown below",
    ),
    ("?", "this help"),
];

/// Static strings for dynamic column names; bounded by the kernel's migrate types.
fn intern(s: &str) -> &'static str {
    use std::sync::Mutex;
    static NAMES: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = names.iter().find(|n| **n == s) {
        return n;
    }
    if names.len() >= 64 {
        return "OTHER";
    }
    let n: &'static str = Box::leak(s.to_string().into_boxed_str());
    names.push(n);
    n
}

fn bucket_label(le: f64) -> String {
    if le.is_infinite() {
        "larger".into()
    } else {
        format!("≤ {}", fmt_bytes(le))
    }
}

/// `1.5k`, `12.3M`: counts in a few characters.
pub fn fmt_count(v: f64) -> String {
    let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
    if v < 1000.0 {
        if v.fract() == 0.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        }
    } else if v < 1e6 {
        format!("{:.1}k", v / 1e3)
    } else if v < 1e9 {
        format!("{:.1}M", v / 1e6)
    } else {
        format!("{:.1}G", v / 1e9)
    }
}

pub fn fmt_rate(v: f64) -> String {
    fmt_count(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::scrape::parse_exposition;

    fn model(text: &str) -> Model {
        Model::from_samples(&parse_exposition(text))
    }

    fn sites(pairs: &[(&str, &str, u64, u64)]) -> Model {
        let mut t = String::new();
        for (a, f, n, b) in pairs {
            t.push_str(&format!(
                "memtrace_callsite_allocations_total{{allocator=\"{a}\",function=\"{f}\"}} {n}\n\
                 memtrace_callsite_allocated_bytes_total{{allocator=\"{a}\",function=\"{f}\"}} {b}\n"
            ));
        }
        model(&t)
    }

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    fn app_with(before: Model, after: Model, secs: f64) -> App {
        let mut app = App::new("test".into(), View::Callsites, SortKey::Rate, String::new());
        app.update(before, 0.0, vec![]);
        app.update(after, secs, vec![]);
        app
    }

    #[test]
    fn rates_come_from_two_refreshes_and_sort_by_each_key() {
        let before = sites(&[("kmalloc", "a", 100, 1000), ("kmalloc", "b", 0, 0)]);
        let after = sites(&[("kmalloc", "a", 110, 1100), ("kmalloc", "b", 40, 40)]);
        let mut app = app_with(before, after, 2.0);
        let t = app.table();
        assert_eq!(t.rows[0][1], "b", "b allocates 20/s, a 5/s: {:?}", t.rows);
        assert_eq!(t.rows[0][2], "20");
        assert_eq!(t.rows[1][2], "5");
        app.on_key(key('s'));
        assert_eq!(app.sort, SortKey::Bytes);
        let t = app.table();
        assert_eq!(t.rows[0][1], "a", "a: 50 B/s, b: 20 B/s");
        assert_eq!(t.rows[0][3], "50 B/s");
    }

    #[test]
    fn first_refresh_has_no_rates_but_sorts_by_totals() {
        let mut app = App::new("t".into(), View::Callsites, SortKey::Rate, String::new());
        app.update(
            sites(&[("kmalloc", "x", 5, 5), ("kmalloc", "y", 9, 9)]),
            0.0,
            vec![],
        );
        assert!(!app.has_rates());
        let t = app.table();
        assert_eq!(t.rows[0][1], "y");
        assert!(t.title.contains("rates after the second refresh"));
    }

    #[test]
    fn filter_is_typed_applied_and_cleared() {
        let m = sites(&[
            ("kmalloc", "vmemdup_user", 1, 1),
            ("kmalloc", "alloc_pipe_info", 1, 1),
        ]);
        let mut app = app_with(m.clone(), m, 1.0);
        app.on_key(key('/'));
        for c in "VMEM".chars() {
            app.on_key(key(c));
        }
        assert_eq!(app.table().rows.len(), 2, "not applied while typing");
        app.on_key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        let t = app.table();
        assert_eq!(t.rows.len(), 1);
        assert_eq!(t.rows[0][1], "vmemdup_user");
        assert_eq!(t.unfiltered, 2);
        assert!(t.title.contains("filter \"VMEM\""));
        // Esc clears an applied filter before it quits.
        assert_eq!(
            app.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)),
            Action::None
        );
        assert_eq!(app.table().rows.len(), 2);
        assert_eq!(
            app.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE)),
            Action::Quit
        );
    }

    #[test]
    fn the_live_view_shows_growth_age_and_steady_suspects() {
        let mut app = App::new("t".into(), View::Live, SortKey::Rate, String::new());
        for i in 0..6u32 {
            let mut m = Model::default();
            let grow = f64::from(i) * 4.0 * 1024.0 * 1024.0;
            m.live.insert(
                (Allocator::Kmalloc, "simple_xattr_alloc".into()),
                (grow, Some(f64::from(i) * 10.0)),
            );
            m.live
                .insert((Allocator::Page, "flat".into()), (8e6, Some(100.0)));
            app.update(m, 10.0, Vec::new());
        }
        let t = app.table();
        assert_eq!(t.columns[..3], ["ALLOCATOR", "FUNCTION", "LIVE"]);
        // Sorted by growth: the growing one first, steady; the flat one not.
        assert_eq!(t.rows[0][1], "simple_xattr_alloc");
        assert_eq!(t.rows[0][4], "50s");
        assert_eq!(t.rows[0][5], "50s");
        assert_eq!(t.rows[0][6], "yes");
        assert_eq!(t.rows[1][1], "flat");
        assert_eq!(t.rows[1][6], "");
        // Gone from the profile: its window falls to zero.
        app.update(Model::default(), 10.0, Vec::new());
        assert!(app.table().rows.is_empty());
        assert!(app.table().title.contains("--profile.enabled true"));
    }

    #[test]
    fn keys_switch_views_pause_help_and_quit() {
        let mut app = App::new("t".into(), View::Callsites, SortKey::Rate, String::new());
        let tab = KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE);
        let seen: Vec<View> = (0..6)
            .map(|_| {
                app.on_key(tab);
                app.view
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                View::Caches,
                View::Processes,
                View::Pages,
                View::Vmalloc,
                View::Live,
                View::Callsites
            ]
        );
        app.on_key(KeyEvent::new(KeyCode::BackTab, KeyModifiers::SHIFT));
        assert_eq!(app.view, View::Live);
        app.on_key(key('3'));
        assert_eq!(app.view, View::Processes);
        app.on_key(key('p'));
        assert!(app.paused);
        app.on_key(key('?'));
        assert!(app.help);
        assert_eq!(app.on_key(key('x')), Action::None, "any key closes help");
        assert!(!app.help);
        assert_eq!(
            app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            Action::Quit
        );
        assert_eq!(app.on_key(key('q')), Action::Quit);
    }

    #[test]
    fn selection_is_clamped_and_picks_the_histogram() {
        let text = "memtrace_kmalloc_size_bytes_bucket{gfp=\"GFP_KERNEL\",le=\"8\"} 0\n\
                    memtrace_kmalloc_size_bytes_bucket{gfp=\"GFP_KERNEL\",le=\"16\"} 4\n\
                    memtrace_kmalloc_size_bytes_bucket{gfp=\"GFP_KERNEL\",le=\"+Inf\"} 4\n\
                    memtrace_kmem_cache_allocations_total{cache=\"dentry\"} 10\n\
                    memtrace_kmem_cache_allocated_bytes_total{cache=\"dentry\"} 1920\n\
                    memtrace_kmem_cache_requested_bytes_total{cache=\"dentry\"} 1900\n\
                    memtrace_callsite_allocations_total{allocator=\"kmalloc\",function=\"f\"} 4\n";
        let mut app = App::new("t".into(), View::Callsites, SortKey::Rate, String::new());
        app.update(model(text), 0.0, vec![]);
        for _ in 0..5 {
            app.on_key(KeyEvent::new(KeyCode::Down, KeyModifiers::NONE));
        }
        app.clamp_selection();
        assert_eq!(app.selected, 0);
        let d = app.detail();
        assert!(d.title.starts_with("kmalloc sizes"), "{d:?}");
        assert_eq!(
            d.bars,
            vec![("≤ 16 B".to_string(), 4.0, "4".to_string())],
            "4 allocations of ≤ 16 B, empty buckets around it left out: {d:?}"
        );
        app.view = View::Caches;
        let d = app.detail();
        assert_eq!(d.bars[1].2, "192 B");
        assert_eq!(app.table().rows[0][6], "1.0%");
    }

    #[test]
    fn pages_are_orders_by_migrate_type() {
        let before = model(
            "memtrace_page_allocations_total{order=\"0\",migratetype=\"Movable\",gfp=\"GFP_HIGHUSER_MOVABLE\"} 10\n\
             memtrace_page_allocations_total{order=\"3\",migratetype=\"Unmovable\",gfp=\"GFP_KERNEL\"} 1\n",
        );
        let after = model(
            "memtrace_page_allocations_total{order=\"0\",migratetype=\"Movable\",gfp=\"GFP_HIGHUSER_MOVABLE\"} 30\n\
             memtrace_page_allocations_total{order=\"3\",migratetype=\"Unmovable\",gfp=\"GFP_KERNEL\"} 2\n\
             memtrace_page_allocation_failures_total{order=\"3\"} 2\n",
        );
        let mut app = app_with(before, after, 1.0);
        app.view = View::Pages;
        let t = app.table();
        assert_eq!(
            t.columns,
            [
                "ORDER",
                "BLOCK",
                "ALLOCS/S",
                "BYTES/S",
                "Movable",
                "Unmovable",
                "ALLOCS",
                "FAILS",
                "FREES/S"
            ]
        );
        assert_eq!(t.rows[0][..5], ["0", "4.0 KiB", "20", "80.0 KiB/s", "20"]);
        assert_eq!(t.rows[1][0], "3");
        assert_eq!(t.rows[1][7], "2");
        app.sort = SortKey::Failures;
        assert_eq!(app.table().rows[0][0], "3");
        app.selected = 0;
        let d = app.detail();
        assert_eq!(
            d.bars,
            vec![
                ("Movable".into(), 0.0, "0".into()),
                ("Unmovable".into(), 1.0, "1".into())
            ]
        );
    }

    #[test]
    fn failures_are_tallied_per_site_and_comm() {
        let mut app = App::new(
            "t".into(),
            View::Callsites,
            SortKey::Failures,
            String::new(),
        );
        let m = sites(&[
            ("kmalloc", "vmemdup_user", 3, 3),
            ("kmalloc", "other_fn", 9, 9),
        ]);
        let rec = EventRecord {
            time: "2026-11-22T01:00:00.000000Z".into(),
            monotonic_ns: 1,
            cpu: 0,
            pid: 42,
            tid: 42,
            comm: "sh".into(),
            allocator: "kmalloc".into(),
            kind: "failure".into(),
            bytes_requested: 100,
            bytes_allocated: 128,
            order: None,
            gfp: "GFP_KERNEL".into(),
            call_site: Some("vmemdup_user+0x2c".into()),
            stack: None,
        };
        app.update(m, 0.0, vec![rec.clone(), rec]);
        let t = app.table();
        assert_eq!(t.rows[0][1], "vmemdup_user");
        assert_eq!(t.rows[0][7], "2");
        assert_eq!(app.failures().count(), 2);
        app.view = View::Processes;
        assert_eq!(
            app.header().failures,
            0.0,
            "the header counts the metric, not events"
        );
    }

    #[test]
    fn header_rates_and_waste() {
        let before = model(
            "memtrace_kmalloc_size_bytes_count{gfp=\"GFP_KERNEL\"} 10\n\
             memtrace_kmalloc_size_bytes_sum{gfp=\"GFP_KERNEL\"} 1000\n\
             memtrace_kmalloc_requested_bytes_total{gfp=\"GFP_KERNEL\"} 900\n",
        );
        let after = model(
            "memtrace_kmalloc_size_bytes_count{gfp=\"GFP_KERNEL\"} 30\n\
             memtrace_kmalloc_size_bytes_sum{gfp=\"GFP_KERNEL\"} 3000\n\
             memtrace_kmalloc_requested_bytes_total{gfp=\"GFP_KERNEL\"} 2400\n\
             memtrace_allocation_failures_total{allocator=\"kmalloc\",gfp=\"GFP_KERNEL\"} 1\n",
        );
        let app = app_with(before, after, 2.0);
        let h = app.header();
        let k = &h.allocators[0];
        assert_eq!(
            (k.allocator, k.rate, k.bytes_rate),
            ("kmalloc", 10.0, 1000.0)
        );
        assert_eq!(h.waste_percent, Some(25.0), "500 of 2000 B in the interval");
        assert_eq!(h.failures, 1.0);
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_count(999.0), "999");
        assert_eq!(fmt_count(1500.0), "1.5k");
        assert_eq!(fmt_count(2.5e6), "2.5M");
        assert_eq!(fmt_bytes(1536.0), "1.5 KiB");
        assert_eq!(fmt_bytes(f64::NAN), "0 B");
        assert_eq!(bucket_label(f64::INFINITY), "larger");
    }
}
