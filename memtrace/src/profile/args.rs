//! Heap profiling's flags, shared by the daemon, `memtrace profile` and `memtrace leaks`.

use crate::bpf::{ProfileOptions, Tracer};

use super::{
    live::{Limits, Profiler},
    weight::{Estimator, gaps},
};

/// Heap profiling's tuning, shared by the daemon, `memtrace profile` and `memtrace leaks`.
#[derive(Debug, Clone, clap::Args)]
pub struct ProfileArgs {
    /// The mean number of bytes allocated between two samples (per CPU and allocator):
    /// lower is more precise and costs more.
    #[arg(
        long = "profile.sample-bytes",
        env = "MEMTRACE_PROFILE_SAMPLE_BYTES",
        default_value_t = ProfileArgs::DEFAULTS.sample_bytes,
        value_parser = clap::value_parser!(u64).range(64..=1 << 34),
        value_name = "BYTES"
    )]
    pub sample_bytes: u64,
    /// Most live samples held (the kernel's live-sample map); when full, new samples are
    /// not taken and count in memtrace_events_lost_total{reason="profile_live_full"}.
    #[arg(
        long = "profile.max-live",
        env = "MEMTRACE_PROFILE_MAX_LIVE",
        default_value_t = ProfileArgs::DEFAULTS.max_live,
        value_parser = clap::value_parser!(u32).range(1024..=1 << 22),
        value_name = "N"
    )]
    pub max_live: u32,
    /// Most distinct kernel stacks with their own totals; when full, a stack with nothing
    /// live makes room, else samples of further stacks count in their allocator's `[other]`
    /// stack and in memtrace_events_lost_total{reason="profile_stacks_full"}.
    #[arg(
        long = "profile.max-stacks",
        env = "MEMTRACE_PROFILE_MAX_STACKS",
        default_value_t = ProfileArgs::DEFAULTS.max_stacks,
        value_parser = clap::value_parser!(u32).range(16..=1 << 20),
        value_name = "N"
    )]
    pub max_stacks: u32,
    /// Live samples older than this many seconds are taken for allocations whose free was
    /// missed, and dropped (memtrace_profile_phantom_samples_total{reason="aged_out"}); 0
    /// keeps them.
    #[arg(
        long = "profile.max-age",
        env = "MEMTRACE_PROFILE_MAX_AGE",
        default_value_t = ProfileArgs::DEFAULTS.max_age_secs,
        value_name = "SECONDS"
    )]
    pub max_age_secs: u64,
}

impl ProfileArgs {
    /// The flags' defaults (also what `top` profiles with when it runs its own programs).
    pub const DEFAULTS: ProfileArgs = ProfileArgs {
        sample_bytes: 512 * 1024,
        max_live: 65_536,
        max_stacks: 4096,
        max_age_secs: 86_400,
    };

    /// The tracer's profiling options.
    pub fn tracer_options(&self) -> ProfileOptions {
        ProfileOptions {
            sample_bytes: self.sample_bytes,
            max_live: self.max_live,
        }
    }

    /// A profiler for `tracer` (`None` when it was started without profiling), with a leak
    /// window of `window` ticks.
    pub fn profiler(&self, tracer: &Tracer, window: usize) -> Option<Profiler> {
        let p = tracer.profile()?;
        Some(Profiler::new(
            Estimator::of(&gaps(p.sample_bytes)),
            p.sample_bytes,
            Limits {
                max_live: p.max_live as usize,
                max_stacks: self.max_stacks as usize,
                max_age_ns: self.max_age_secs.saturating_mul(1_000_000_000),
                window,
            },
        ))
    }
}
