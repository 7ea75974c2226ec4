//! Where `top`'s numbers come from: this process's own programs, read through the exporter
//! the daemon uses, or a running daemon's `/metrics` and `/api/failures`. Both give the same
//! [`Model`] and the failures seen since the last poll.

use std::{sync::Mutex, time::Duration};

use anyhow::{Context as _, bail};
use aya::maps::{MapData, RingBuf};

use super::{TopArgs, model::Model};
use crate::{
    bpf::{Tracer, TracerOptions, events},
    export::{
        Exporter, LabelLimits,
        collect::{self, Collection, Health},
        record::{Clock, EventRecord, FAILURES_PATH, SeqRecord},
        scrape::{self, parse_exposition},
    },
    profile::{ProfileArgs, live::Profiler},
};

/// Where the numbers come from: both give a [`Model`] from memtrace's own metrics, and the
/// failures seen since the last poll.
pub(super) enum Source {
    /// Programs attached by this process, read through the same exporter the daemon uses.
    Local {
        tracer: Box<Tracer>,
        exporter: Box<Exporter>,
        ring: RingBuf<MapData>,
        clock: Clock,
        /// The heap profile behind the live view, and its ring buffer.
        profile: Box<(Mutex<Profiler>, RingBuf<MapData>)>,
        /// The collectors' states, so that a failing one is logged once.
        health: Box<Health>,
    },
    /// A daemon's `/metrics` and `/api/failures`.
    Remote {
        metrics_url: String,
        failures_url: String,
        last_seq: Option<u64>,
    },
}

/// The heap profile `top` keeps when it runs its own programs: the daemon's defaults.
const LOCAL_PROFILE: ProfileArgs = ProfileArgs::DEFAULTS;

/// Rows of the attribution tables when `top` runs its own programs.
const LOCAL_LABELS: LabelLimits = LabelLimits {
    caches: 200,
    callsites: 200,
    processes: 200,
    cgroups: 200,
};

impl Source {
    pub(super) fn open(args: &TopArgs) -> anyhow::Result<Source> {
        match &args.from {
            Some(url) => {
                let (metrics_url, failures_url) = daemon_urls(url)?;
                // An unreachable daemon is reported before the screen is taken.
                scrape::get(&metrics_url, Duration::from_secs(3))
                    .with_context(|| format!("no memtrace daemon answered at {metrics_url}"))?;
                Ok(Source::Remote {
                    metrics_url,
                    failures_url,
                    last_seq: None,
                })
            }
            None => {
                let mut tracer = Tracer::start(&TracerOptions {
                    attach: args.attach,
                    // Failures only: top shows the latest; large allocations are not needed.
                    notable_min_bytes: 0,
                    notable_min_order: u32::MAX,
                    // The live view: a heap profile at the daemon's default rate.
                    profile: Some(LOCAL_PROFILE.tracer_options()),
                    ..Default::default()
                })?;
                let ring = tracer.take_events()?;
                let profile_ring = tracer.take_profile_events()?;
                let profiler = LOCAL_PROFILE
                    .profiler(&tracer, 2)
                    .context("the programs were loaded without profiling")?;
                let exporter =
                    Exporter::for_running_kernel(tracer.migratetypes().clone(), LOCAL_LABELS);
                Ok(Source::Local {
                    tracer: Box::new(tracer),
                    exporter: Box::new(exporter),
                    ring,
                    clock: Clock::now(),
                    profile: Box::new((Mutex::new(profiler), profile_ring)),
                    health: Box::default(),
                })
            }
        }
    }

    pub(super) fn describe(&self) -> String {
        match self {
            Source::Local { .. } => "this process's probes".to_string(),
            Source::Remote { metrics_url, .. } => metrics_url.clone(),
        }
    }

    /// The model now, and the failures since the last call.
    pub(super) fn poll(&mut self) -> anyhow::Result<(Model, Vec<EventRecord>)> {
        match self {
            Source::Local {
                tracer,
                exporter,
                ring,
                clock,
                profile,
                health,
            } => {
                let mut raw = Vec::new();
                events::drain(ring, |e| raw.push(e));
                let (profiler, profile_ring) = &mut **profile;
                crate::profile::drain_into(
                    profile_ring,
                    profiler.get_mut().unwrap_or_else(|e| e.into_inner()),
                );
                let mut c = Collection::new();
                collect::kernel(
                    &mut c,
                    collect::Kernel {
                        tracer,
                        exporter,
                        profile: Some((profiler, Ok(()))),
                    },
                );
                let families = c.finish(health);
                let text = prometheus::TextEncoder::new().encode_to_string(&families)?;
                let model = Model::from_samples(&parse_exposition(&text));
                let failures = raw
                    .iter()
                    .filter(|e| events::Kind::of(e) == events::Kind::Failure)
                    .map(|e| exporter.record(e, clock))
                    .collect();
                Ok((model, failures))
            }
            Source::Remote {
                metrics_url,
                failures_url,
                last_seq,
            } => {
                let text = scrape::get(metrics_url, Duration::from_secs(3))?;
                let model = Model::from_samples(&parse_exposition(&text));
                let failures = match scrape::get_response(failures_url, Duration::from_secs(3))? {
                    (200, body) => {
                        let list: Vec<SeqRecord> =
                            serde_json::from_str(&body).with_context(|| {
                                format!("{failures_url} did not return memtrace failures")
                            })?;
                        let newest = list.iter().map(|r| r.seq).max();
                        // The first poll only marks where we are: earlier failures are not
                        // "since top started".
                        let fresh = match *last_seq {
                            None => Vec::new(),
                            Some(seen) => list
                                .into_iter()
                                .filter(|r| r.seq > seen)
                                .map(|r| r.record)
                                .collect(),
                        };
                        *last_seq = Some(newest.unwrap_or(0).max(last_seq.unwrap_or(0)));
                        fresh
                    }
                    // An older daemon without the endpoint: metrics still work.
                    (404, _) => Vec::new(),
                    (status, _) => bail!("{failures_url} answered {status}"),
                };
                Ok((model, failures))
            }
        }
    }
}

/// The metrics and failures URLs of a daemon given as `http://host:port[/path]` (no path:
/// `/metrics`).
fn daemon_urls(url: &str) -> anyhow::Result<(String, String)> {
    let (authority, path) = scrape::split_url(url).map_err(|e| anyhow::anyhow!("--from: {e}"))?;
    let path = if path == "/" { "/metrics" } else { &path };
    Ok((
        format!("http://{authority}{path}"),
        format!("http://{authority}{FAILURES_PATH}"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daemon_urls_from_an_address_or_a_metrics_url() {
        assert_eq!(
            daemon_urls("http://h:9701").unwrap(),
            (
                "http://h:9701/metrics".into(),
                "http://h:9701/api/failures".into()
            )
        );
        assert_eq!(
            daemon_urls("http://h:9701/custom").unwrap().0,
            "http://h:9701/custom"
        );
        assert_eq!(daemon_urls("http://h").unwrap().0, "http://h:80/metrics");
        assert!(daemon_urls("https://h").is_err());
        assert!(daemon_urls("http:///x").is_err());
    }
}
