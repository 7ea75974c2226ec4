//! One scrape's collection, split into collectors that each read one source: `symbolizer`
//! (the kernel's symbols, reloaded after a module change), `maps` (the tracer's snapshot and
//! every family built from it), `limits` (/proc's figures of what can be allocated), `profile`
//! (the heap profile, with profiling on) and, in the daemon, `notable` (the notable-event ring
//! drain). A collector that fails is left out of the scrape and says so in
//! `memtrace_collector_up{collector} 0`; the others, and the scrape, go on.
//!
//! A failing collector's families are absent for that scrape, never zeroed: every counter is
//! read from a cumulative source (kernel maps, counts held in memory), so the next successful
//! scrape continues where the last one was, and a counter never goes backwards. [`Health`]
//! remembers each collector's state across scrapes, so that a failure is logged when it
//! starts (a warning with its one-line reason) and when it ends (an info line), not on every
//! scrape.

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use prometheus::proto::MetricFamily;

use super::{Exporter, limits_families, status};
use crate::{bpf::Tracer, profile::live::Profiler};

/// The `collector` label of each collector.
pub const SYMBOLIZER: &str = "symbolizer";
pub const MAPS: &str = "maps";
pub const LIMITS: &str = "limits";
pub const PROFILE: &str = "profile";
pub const NOTABLE: &str = "notable";

/// What one collector did on one scrape.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub collector: &'static str,
    /// `Err` with the one-line reason when it did not read its source.
    pub result: Result<(), String>,
    /// How long it took.
    pub took: Duration,
}

/// One scrape's families and its collectors' outcomes, in the order they ran.
#[derive(Default)]
pub struct Collection {
    families: Vec<MetricFamily>,
    outcomes: Vec<Outcome>,
}

impl Collection {
    pub fn new() -> Collection {
        Collection::default()
    }

    /// Runs collector `collector`: `f` pushes its families and says whether it read its
    /// source. A failing collector's families are dropped, whatever it pushed.
    pub fn run(
        &mut self,
        collector: &'static str,
        f: impl FnOnce(&mut Vec<MetricFamily>) -> Result<(), String>,
    ) {
        let started = Instant::now();
        let mut families = Vec::new();
        let result = f(&mut families).map_err(|e| crate::sync::collapse(&e));
        if result.is_ok() {
            self.families.extend(families);
        }
        self.outcomes.push(Outcome {
            collector,
            result,
            took: started.elapsed(),
        });
    }

    /// Families that belong to no collector (the process's own, read from memory).
    pub fn extend(&mut self, families: impl IntoIterator<Item = MetricFamily>) {
        self.families.extend(families);
    }

    pub fn outcomes(&self) -> &[Outcome] {
        &self.outcomes
    }

    /// The families, then `memtrace_collector_up` and `memtrace_collector_duration_seconds`
    /// of every collector that ran; `health` notes (and logs) each change of state.
    pub fn finish(mut self, health: &mut Health) -> Vec<MetricFamily> {
        health.observe(&self.outcomes);
        self.families
            .extend(status::collector_families(&self.outcomes));
        self.families
    }
}

/// A change of a collector's state, as [`Health::observe`] logs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It failed after succeeding (or on its first run).
    Down {
        collector: &'static str,
        reason: String,
    },
    /// It succeeded after failing.
    Recovered { collector: &'static str },
}

/// Each collector's state across scrapes: which are down, and why.
#[derive(Debug, Default)]
pub struct Health {
    down: BTreeMap<&'static str, String>,
}

impl Health {
    /// Notes `outcomes` and logs each change: a warning with the reason when a collector goes
    /// down, an info line when it recovers; nothing while a state lasts (a new reason while
    /// down is a debug line). A collector starts as up: one that fails on its first run is
    /// logged. Returns the changes.
    pub fn observe(&mut self, outcomes: &[Outcome]) -> Vec<Change> {
        let mut changes = Vec::new();
        for o in outcomes {
            match (&o.result, self.down.get(o.collector)) {
                (Ok(()), None) => {}
                (Ok(()), Some(_)) => {
                    self.down.remove(o.collector);
                    tracing::info!(collector = o.collector, "collector recovered");
                    changes.push(Change::Recovered {
                        collector: o.collector,
                    });
                }
                (Err(e), None) => {
                    tracing::warn!(collector = o.collector, "collector failed: {e}");
                    self.down.insert(o.collector, e.clone());
                    changes.push(Change::Down {
                        collector: o.collector,
                        reason: e.clone(),
                    });
                }
                (Err(e), Some(before)) => {
                    if e != before {
                        tracing::debug!(collector = o.collector, "collector still failing: {e}");
                        self.down.insert(o.collector, e.clone());
                    }
                }
            }
        }
        changes
    }

    /// Why `collector` is down, if it is.
    pub fn down(&self, collector: &str) -> Option<&str> {
        self.down.get(collector).map(String::as_str)
    }
}

/// What the collectors of the running kernel read (see [`kernel`]).
pub struct Kernel<'a> {
    pub tracer: &'a Tracer,
    pub exporter: &'a mut Exporter,
    /// With profiling on: the profiler, locked only while its figures are read (never across
    /// a read of the kernel), and whether what feeds it works (`Err`: why not).
    pub profile: Option<(&'a Mutex<Profiler>, Result<(), String>)>,
}

/// The collectors of the running kernel that every reader of the maps runs (the daemon and
/// `top`): `symbolizer` first, so that symbols are reloaded here and not in the middle of a
/// family's build, then `maps`, `limits` and, with profiling on, `profile`.
pub fn kernel(c: &mut Collection, k: Kernel<'_>) {
    let Kernel {
        tracer,
        exporter,
        profile,
    } = k;
    c.run(SYMBOLIZER, |out| {
        let status = exporter.refresh_symbols();
        out.push(status::symbol_reloads_family(exporter.symbol_reloads()));
        status
    });
    c.run(MAPS, |out| {
        let snap = tracer
            .snapshot()
            .map_err(|e| crate::sync::one_line(e.as_ref()))?;
        let losses = profile
            .as_ref()
            .map(|(p, _)| super::ProfileLosses::from(&*lock(p)));
        out.extend(exporter.families(&snap, tracer.probes(), losses));
        Ok(())
    });
    c.run(LIMITS, |out| {
        let l = crate::limits::collect(&crate::limits::Sources::live())
            .map_err(|e| crate::sync::one_line(&e))?;
        out.extend(limits_families(&l));
        Ok(())
    });
    if let Some((p, health)) = profile {
        c.run(PROFILE, |out| {
            health?;
            exporter.profile_families(&lock(p), out);
            Ok(())
        });
    }
}

use crate::sync::lock;

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn outcome(collector: &'static str, result: Result<(), &str>) -> Outcome {
        Outcome {
            collector,
            result: result.map_err(str::to_string),
            took: Duration::ZERO,
        }
    }

    #[test]
    fn health_reports_each_change_once() {
        let mut h = Health::default();
        assert_eq!(h.observe(&[outcome(MAPS, Ok(()))]), vec![]);
        let down = h.observe(&[
            outcome(MAPS, Err("map read failed")),
            outcome(LIMITS, Ok(())),
        ]);
        assert_eq!(
            down,
            vec![Change::Down {
                collector: MAPS,
                reason: "map read failed".into()
            }]
        );
        assert_eq!(h.down(MAPS), Some("map read failed"));
        assert_eq!(h.down(LIMITS), None);
        // Still down, even for another reason: no new change.
        assert_eq!(h.observe(&[outcome(MAPS, Err("map read failed"))]), vec![]);
        assert_eq!(h.observe(&[outcome(MAPS, Err("another reason"))]), vec![]);
        assert_eq!(h.down(MAPS), Some("another reason"));
        assert_eq!(
            h.observe(&[outcome(MAPS, Ok(()))]),
            vec![Change::Recovered { collector: MAPS }]
        );
        assert_eq!(h.observe(&[outcome(MAPS, Ok(()))]), vec![]);
        // Down again: logged again.
        assert_eq!(h.observe(&[outcome(MAPS, Err("x"))]).len(), 1);
    }

    #[test]
    fn a_collector_failing_on_its_first_run_is_reported() {
        let mut h = Health::default();
        assert_eq!(
            h.observe(&[outcome(SYMBOLIZER, Err("hidden"))]),
            vec![Change::Down {
                collector: SYMBOLIZER,
                reason: "hidden".into()
            }]
        );
    }

    /// A writer into a shared buffer, for capturing log lines.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_lasting_failure_is_logged_once_and_its_recovery_once() {
        let logs = Captured::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let mut h = Health::default();
            for _ in 0..5 {
                let mut c = Collection::new();
                c.run(LIMITS, |_| {
                    Err("cannot read /proc/buddyinfo:\nNo such file".into())
                });
                c.run(MAPS, |_| Ok(()));
                c.finish(&mut h);
            }
            for _ in 0..3 {
                let mut c = Collection::new();
                c.run(LIMITS, |_| Ok(()));
                c.finish(&mut h);
            }
        });
        let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("WARN")
                && lines[0].contains("collector=\"limits\"")
                && lines[0].contains("collector failed: cannot read /proc/buddyinfo: No such file"),
            "{text}"
        );
        assert!(
            lines[1].contains("INFO") && lines[1].contains("collector recovered"),
            "{text}"
        );
    }

    fn render(f: &[MetricFamily]) -> String {
        prometheus::TextEncoder::new().encode_to_string(f).unwrap()
    }

    #[test]
    fn a_failing_collector_drops_its_families_and_reports_up_and_duration() {
        let mut h = Health::default();
        let mut c = Collection::new();
        c.run(MAPS, |out| {
            out.push(status::symbol_reloads_family(3));
            Err("reading COUNTERS: bad fd".into())
        });
        c.run(SYMBOLIZER, |out| {
            out.push(status::symbol_reloads_family(2));
            Ok(())
        });
        c.run(LIMITS, |_| {
            std::thread::sleep(Duration::from_millis(20));
            Ok(())
        });
        assert_eq!(c.outcomes().len(), 3);
        assert!(c.outcomes()[2].took >= Duration::from_millis(20));
        let text = render(&c.finish(&mut h));
        assert!(text.contains("memtrace_symbol_reloads_total 2\n"), "{text}");
        assert!(!text.contains("memtrace_symbol_reloads_total 3"), "{text}");
        assert!(
            text.contains("memtrace_collector_up{collector=\"maps\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("memtrace_collector_up{collector=\"symbolizer\"} 1\n"));
        assert!(text.contains("memtrace_collector_up{collector=\"limits\"} 1\n"));
        assert!(text.contains("# TYPE memtrace_collector_duration_seconds gauge"));
        let limits_took: f64 = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("memtrace_collector_duration_seconds{collector=\"limits\"} ")
            })
            .expect("a duration for limits")
            .parse()
            .unwrap();
        assert!((0.02..5.0).contains(&limits_took), "{limits_took}");
        assert_eq!(h.down(MAPS), Some("reading COUNTERS: bad fd"));
    }

    #[test]
    fn reasons_are_one_line() {
        assert_eq!(crate::sync::collapse("a\n b\n\nc"), "a b c");
        assert_eq!(crate::sync::collapse("plain"), "plain");
    }
}
