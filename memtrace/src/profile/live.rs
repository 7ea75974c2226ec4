//! The heap profile's state in userspace: the live samples, read from the profile ring
//! buffer, and the totals of each kernel stack, bounded, with each stack's recent live bytes
//! for the leak test.

use std::collections::{BTreeMap, HashMap};

use memtrace_common::{
    Allocator, LiveKey, PROFILE_ALLOC, PROFILE_FRAMES, PROFILE_FREE, PROFILE_MISSED_FREE,
    ProfileFree, ProfileSample,
};

use super::{
    growth::{Series, Trend},
    report::{HeapProfile, StackTotals},
    weight::Estimator,
};
use crate::label::{UNKNOWN, symbolize::Symbolizer};

/// Bounds and rates of a [`Profiler`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Live samples held (the kernel's live map has the same size).
    pub max_live: usize,
    /// Distinct stacks with their own totals; the rest add to one `[other]` stack per
    /// allocator, and are counted ([`Profiler::stacks_full`]).
    pub max_stacks: usize,
    /// Live samples older than this many nanoseconds are taken for samples whose free was
    /// never seen, and dropped ([`Profiler::aged_out`]); 0 keeps them.
    pub max_age_ns: u64,
    /// Points of each stack's live-bytes window (see [`super::growth`]).
    pub window: usize,
}

/// One live sample.
#[derive(Debug, Clone, Copy)]
struct Live {
    stack: usize,
    ts_ns: u64,
    objects: f64,
    bytes: f64,
}

/// A stack's identity: its allocator and frames (kernel addresses: they never leave this
/// module but as symbol names).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct StackKey {
    allocator: Allocator,
    frames: Vec<u64>,
}

/// One stack's totals.
#[derive(Debug, Clone)]
struct Stack {
    key: StackKey,
    /// The allocating call site of its first sample (0: none; then the first frame outside
    /// the allocator names the function).
    call_site: u64,
    /// Whether this is an allocator's `[other]` stack.
    other: bool,
    alloc_objects: f64,
    alloc_bytes: f64,
    live_objects: f64,
    live_bytes: f64,
    live_samples: u64,
    series: Series,
}

impl Stack {
    /// A stack with nothing counted yet.
    fn new(key: StackKey, call_site: u64, other: bool) -> Stack {
        Stack {
            key,
            call_site,
            other,
            alloc_objects: 0.0,
            alloc_bytes: 0.0,
            live_objects: 0.0,
            live_bytes: 0.0,
            live_samples: 0,
            series: Series::default(),
        }
    }
}

/// A stack whose live bytes grow steadily (see [`super::growth`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Suspect {
    pub allocator: String,
    /// The function the stack's live bytes are exported under (`memtrace_live_bytes`).
    pub function: String,
    /// Symbolized frames, innermost first.
    pub frames: Vec<String>,
    /// Estimated live bytes now.
    pub live_bytes: f64,
    /// Estimated live objects now.
    pub live_objects: f64,
    /// Bytes per second over the window.
    pub growth_bytes_per_second: f64,
    /// Bytes grown over the window.
    pub growth_bytes: f64,
    /// Seconds the window spans.
    pub window_seconds: f64,
    /// Age of the stack's oldest live sample, seconds.
    pub oldest_age_seconds: f64,
    /// Live samples behind the estimate.
    pub live_samples: u64,
}

/// The live heap profile: fed with the profile ring buffer's records
/// ([`Profiler::record`]), read as a pprof profile ([`Profiler::report`]), as live bytes per
/// allocator and function ([`Profiler::live_by_function`]) and as leak suspects
/// ([`Profiler::suspects`]).
#[derive(Debug)]
pub struct Profiler {
    estimator: Estimator,
    sample_bytes: u64,
    limits: Limits,
    live: HashMap<LiveKey, Live>,
    stacks: Vec<Stack>,
    index: HashMap<StackKey, usize>,
    /// Each allocator's `[other]` stack, once used.
    others: BTreeMap<Allocator, usize>,
    samples: BTreeMap<Allocator, u64>,
    /// Samples that went to an `[other]` stack (the stack table was full of stacks with live
    /// samples).
    pub stacks_full: u64,
    /// Stacks with nothing live that made room for new ones (their allocated totals went to
    /// `[other]`).
    pub stacks_evicted: u64,
    evict_cursor: usize,
    /// Live samples ended because their address was allocated again (a free no probe saw).
    pub address_reused: u64,
    /// Live samples dropped for age (see [`Limits::max_age_ns`]).
    pub aged_out: u64,
    /// Samples dropped because the live set was full.
    pub live_full: u64,
    /// Records that could not be decoded.
    pub malformed: u64,
    /// Why the daemon's drain of the profile ring buffer stopped ([`crate::profile::drain`]):
    /// nothing feeds this profile since. `None` while it runs.
    pub drain_stopped: Option<String>,
    /// Nanoseconds (CLOCK_MONOTONIC) of the first record or tick.
    started_ns: Option<u64>,
}

impl Profiler {
    pub fn new(estimator: Estimator, sample_bytes: u64, limits: Limits) -> Profiler {
        Profiler {
            estimator,
            sample_bytes,
            limits,
            live: HashMap::new(),
            stacks: Vec::new(),
            index: HashMap::new(),
            others: BTreeMap::new(),
            samples: BTreeMap::new(),
            stacks_full: 0,
            stacks_evicted: 0,
            evict_cursor: 0,
            address_reused: 0,
            aged_out: 0,
            live_full: 0,
            malformed: 0,
            drain_stopped: None,
            started_ns: None,
        }
    }

    /// Applies one record of the profile ring buffer.
    pub fn record(&mut self, bytes: &[u8]) {
        let kind = bytes
            .get(..4)
            .map(|b| u32::from_ne_bytes(b.try_into().unwrap_or_default()));
        match kind {
            Some(PROFILE_ALLOC) if bytes.len() >= std::mem::size_of::<ProfileSample>() => {
                // SAFETY: ProfileSample is #[repr(C)] plain integers, valid for any bit
                // pattern; the length is checked and the read is unaligned-safe.
                let s = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ProfileSample>()) };
                self.sample(&s);
            }
            Some(PROFILE_FREE | PROFILE_MISSED_FREE)
                if bytes.len() >= std::mem::size_of::<ProfileFree>() =>
            {
                // SAFETY: as above.
                let f = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<ProfileFree>()) };
                if self.end(&f.key) && f.kind == PROFILE_MISSED_FREE {
                    self.address_reused += 1;
                }
            }
            _ => self.malformed += 1,
        }
    }

    /// A sampled allocation.
    pub fn sample(&mut self, s: &ProfileSample) {
        let Some(allocator) = Allocator::from_u32(s.allocator) else {
            self.malformed += 1;
            return;
        };
        self.started_ns.get_or_insert(s.ts_ns);
        // A sample still live at this address lost its free: it ends here.
        if self.end(&s.key) {
            self.address_reused += 1;
        }
        if self.live.len() >= self.limits.max_live {
            self.live_full += 1;
            return;
        }
        let depth = (s.stack_bytes.max(0) as usize / 8).min(PROFILE_FRAMES);
        let frames: Vec<u64> = s.frames[..depth]
            .iter()
            .copied()
            .filter(|&f| f != 0)
            .collect();
        let stack = self.stack(StackKey { allocator, frames }, s.call_site);
        let (objects, bytes) = self.estimator.weight(s.bytes);
        let st = &mut self.stacks[stack];
        st.alloc_objects += objects;
        st.alloc_bytes += bytes;
        st.live_objects += objects;
        st.live_bytes += bytes;
        st.live_samples += 1;
        *self.samples.entry(allocator).or_default() += 1;
        self.live.insert(
            s.key,
            Live {
                stack,
                ts_ns: s.ts_ns,
                objects,
                bytes,
            },
        );
    }

    /// The stack's index, new if need be. When the table is full, a stack with nothing live
    /// makes room (its allocated totals move to its allocator's `[other]` stack, so the
    /// profile's totals stay whole); when every stack holds live samples, the sample counts
    /// in its allocator's `[other]` stack.
    fn stack(&mut self, key: StackKey, call_site: u64) -> usize {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        if self.index.len() < self.limits.max_stacks {
            let i = self.stacks.len();
            self.stacks.push(Stack::new(key.clone(), call_site, false));
            self.index.insert(key, i);
            return i;
        }
        if let Some(j) = self.evictable() {
            let old = std::mem::replace(
                &mut self.stacks[j],
                Stack::new(key.clone(), call_site, false),
            );
            self.index.remove(&old.key);
            self.index.insert(key, j);
            let o = self.other(old.key.allocator);
            self.stacks[o].alloc_objects += old.alloc_objects;
            self.stacks[o].alloc_bytes += old.alloc_bytes;
            self.stacks_evicted += 1;
            return j;
        }
        self.stacks_full += 1;
        self.other(key.allocator)
    }

    /// A stack with nothing live, found from a rotating cursor (so that successive evictions
    /// do not rescan the same stacks).
    fn evictable(&mut self) -> Option<usize> {
        let n = self.stacks.len();
        for step in 0..n {
            let j = (self.evict_cursor + step) % n;
            let st = &self.stacks[j];
            if !st.other && st.live_samples == 0 {
                self.evict_cursor = (j + 1) % n;
                return Some(j);
            }
        }
        None
    }

    /// The index of `allocator`'s `[other]` stack, made on first use.
    fn other(&mut self, allocator: Allocator) -> usize {
        if let Some(&i) = self.others.get(&allocator) {
            return i;
        }
        let i = self.stacks.len();
        let key = StackKey {
            allocator,
            frames: Vec::new(),
        };
        self.stacks.push(Stack::new(key, 0, true));
        self.others.insert(allocator, i);
        i
    }

    /// Ends the live sample at `key`; whether there was one.
    fn end(&mut self, key: &LiveKey) -> bool {
        let Some(l) = self.live.remove(key) else {
            return false;
        };
        let st = &mut self.stacks[l.stack];
        st.live_objects -= l.objects;
        st.live_bytes -= l.bytes;
        st.live_samples -= 1;
        if st.live_samples == 0 {
            // No rounding residue once nothing is live.
            st.live_objects = 0.0;
            st.live_bytes = 0.0;
        }
        true
    }

    /// Once per tick: records each stack's live bytes in its window, and drops live samples
    /// older than the age limit, whose keys and sample times it returns (the caller removes
    /// them from the kernel's live map too).
    pub fn tick(&mut self, now_ns: u64) -> Vec<(LiveKey, u64)> {
        let start = *self.started_ns.get_or_insert(now_ns);
        let mut old = Vec::new();
        if self.limits.max_age_ns > 0 {
            old = self
                .live
                .iter()
                .filter(|(_, l)| now_ns.saturating_sub(l.ts_ns) > self.limits.max_age_ns)
                .map(|(k, l)| (*k, l.ts_ns))
                .collect();
            for (k, _) in &old {
                self.end(k);
                self.aged_out += 1;
            }
        }
        let t = now_ns.saturating_sub(start) as f64 / 1e9;
        for st in &mut self.stacks {
            if st.live_samples > 0 || !st.series.is_empty() {
                st.series.push(t, st.live_bytes, self.limits.window);
            }
        }
        old
    }

    /// Samples taken, by allocator.
    pub fn samples(&self) -> &BTreeMap<Allocator, u64> {
        &self.samples
    }

    /// Live samples held.
    pub fn live_samples(&self) -> usize {
        self.live.len()
    }

    /// Stacks with their own totals.
    pub fn stacks(&self) -> usize {
        self.index.len()
    }

    /// The sampling mean, bytes.
    pub fn sample_bytes(&self) -> u64 {
        self.sample_bytes
    }

    /// The symbolized frames of a stack, innermost first, without the tracing machinery's
    /// own frames (the program, the tracepoint's trampolines) at the top.
    fn frames(&self, st: &Stack, symbols: Option<&Symbolizer>) -> Vec<String> {
        if st.other {
            return vec!["[other]".to_string()];
        }
        let names: Vec<String> = st
            .key
            .frames
            .iter()
            .map(|&a| symbols.map_or(UNKNOWN, |s| s.function_str(a)).to_string())
            .collect();
        let skip = names.iter().take_while(|n| is_tracing(n)).count();
        names[skip..].to_vec()
    }

    /// The function a stack's live bytes are exported under: its call site's, else the first
    /// frame outside the allocator and the tracing machinery.
    fn function(&self, st: &Stack, frames: &[String], symbols: Option<&Symbolizer>) -> String {
        if st.other {
            return crate::label::OTHER.to_string();
        }
        if st.call_site != 0 {
            return symbols
                .map_or(UNKNOWN, |s| s.function_str(st.call_site))
                .to_string();
        }
        frames
            .iter()
            .find(|f| !is_allocator(f) && f.as_str() != UNKNOWN)
            .cloned()
            .unwrap_or_else(|| UNKNOWN.to_string())
    }

    /// The profile as pprof and folded stacks read it.
    pub fn report(
        &self,
        symbols: Option<&Symbolizer>,
        time_nanos: i64,
        duration_nanos: i64,
    ) -> HeapProfile {
        let stacks = self
            .stacks
            .iter()
            .map(|st| StackTotals {
                allocator: st.key.allocator.name().to_string(),
                frames: self.frames(st, symbols),
                alloc_objects: st.alloc_objects,
                alloc_space: st.alloc_bytes,
                inuse_objects: st.live_objects.max(0.0),
                inuse_space: st.live_bytes.max(0.0),
            })
            .collect();
        HeapProfile {
            stacks,
            time_nanos,
            duration_nanos,
            sample_bytes: self.sample_bytes as i64,
        }
    }

    /// Estimated live bytes by (allocator, function), for `memtrace_live_bytes`.
    pub fn live_by_function(
        &self,
        symbols: Option<&Symbolizer>,
    ) -> BTreeMap<(Allocator, String), f64> {
        self.by_function(symbols)
            .into_iter()
            .map(|(k, (bytes, _))| (k, bytes))
            .collect()
    }

    /// The time (`bpf_ktime_get_ns`) of each stack's oldest live sample, by stack index.
    fn oldest_by_stack(&self) -> HashMap<usize, u64> {
        let mut oldest: HashMap<usize, u64> = HashMap::new();
        for l in self.live.values() {
            let e = oldest.entry(l.stack).or_insert(l.ts_ns);
            *e = (*e).min(l.ts_ns);
        }
        oldest
    }

    /// Estimated live bytes and the oldest live sample's time (`bpf_ktime_get_ns`) by
    /// (allocator, function).
    pub fn by_function(
        &self,
        symbols: Option<&Symbolizer>,
    ) -> BTreeMap<(Allocator, String), (f64, u64)> {
        let oldest = self.oldest_by_stack();
        let mut out = BTreeMap::new();
        for (i, st) in self.stacks.iter().enumerate() {
            // Only what is live (the exporter keeps a function's series, at 0).
            if st.live_samples == 0 {
                continue;
            }
            let frames = self.frames(st, symbols);
            let f = self.function(st, &frames, symbols);
            let e = out.entry((st.key.allocator, f)).or_insert((0.0, u64::MAX));
            e.0 += st.live_bytes.max(0.0);
            e.1 = e.1.min(oldest.get(&i).copied().unwrap_or(u64::MAX));
        }
        out
    }

    /// Stacks whose live bytes grew steadily over their window, fastest first.
    pub fn suspects(&self, symbols: Option<&Symbolizer>, now_ns: u64) -> Vec<Suspect> {
        let floor = 2.0 * self.sample_bytes as f64;
        let oldest = self.oldest_by_stack();
        let mut out: Vec<Suspect> = self
            .stacks
            .iter()
            .enumerate()
            .filter_map(|(i, st)| {
                let t: Trend = st.series.suspect(floor)?;
                let frames = self.frames(st, symbols);
                Some(Suspect {
                    allocator: st.key.allocator.name().to_string(),
                    function: self.function(st, &frames, symbols),
                    frames,
                    live_bytes: st.live_bytes.max(0.0),
                    live_objects: st.live_objects.max(0.0),
                    growth_bytes_per_second: t.slope,
                    growth_bytes: t.growth,
                    window_seconds: t.span,
                    oldest_age_seconds: oldest
                        .get(&i)
                        .map_or(0.0, |&ts| now_ns.saturating_sub(ts) as f64 / 1e9),
                    live_samples: st.live_samples,
                })
            })
            .collect();
        out.sort_by(|a, b| {
            b.growth_bytes_per_second
                .total_cmp(&a.growth_bytes_per_second)
                .then_with(|| a.function.cmp(&b.function))
        });
        out
    }
}

/// Frames of the tracing machinery between the allocator and memtrace's program.
fn is_tracing(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "bpf_prog_",
        "bpf_trace_run",
        "__bpf_trace_",
        "trace_event_raw_event_",
        "perf_trace_",
        "__traceiter_",
        "trace_call_bpf",
        "bpf_get_stack",
        "__bpf_prog_enter",
        "__bpf_prog_exit",
    ];
    PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Frames of the allocators themselves (a heuristic over mainline names, `_noprof` forms
/// included by prefix): the function a stack is exported under is the first caller outside
/// them.
fn is_allocator(name: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "__alloc_pages",
        "alloc_pages",
        "__alloc_frozen_pages",
        "alloc_frozen_pages",
        "get_page_from_freelist",
        "rmqueue",
        "__folio_alloc",
        "folio_alloc",
        "__get_free_pages",
        "get_zeroed_page",
        "alloc_slab_page",
        "allocate_slab",
        "new_slab",
        "___slab_alloc",
        "__slab_alloc",
        "slab_alloc",
        "__kmalloc",
        "___kmalloc",
        "kmalloc",
        "kmem_cache_alloc",
        "__kmem_cache_alloc",
        "kvmalloc",
        "__kvmalloc",
        "__vmalloc",
        "vmalloc",
        "vzalloc",
        "alloc_vmap_area",
        "__get_vm_area",
        "get_vm_area",
        "vm_area_alloc_pages",
        "vm_map_ram",
        "vmap",
        "pcpu_",
        "__alloc_percpu",
        "alloc_percpu",
    ];
    is_tracing(name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

#[cfg(test)]
mod tests {
    use memtrace_common::SPACE_SLAB;

    use super::*;
    use crate::profile::weight::{Estimator, gaps};

    const LIMITS: Limits = Limits {
        max_live: 100,
        max_stacks: 2,
        max_age_ns: 1_000_000_000,
        window: 8,
    };

    fn symbols() -> Symbolizer {
        Symbolizer::from_kallsyms(
            "ffffffff81000000 T bpf_trace_run3\n\
             ffffffff81001000 T __kmalloc_noprof\n\
             ffffffff81002000 T simple_xattr_alloc\n\
             ffffffff81003000 T do_syscall_64\n\
             ffffffff81004000 T __alloc_pages_noprof\n\
             ffffffff81005000 T pipe_write\n",
            "test",
        )
        .unwrap()
    }

    fn sample(addr: u64, ts_ns: u64, frames: &[u64], call_site: u64) -> ProfileSample {
        let mut s = ProfileSample {
            kind: PROFILE_ALLOC,
            allocator: Allocator::Kmalloc as u32,
            ts_ns,
            key: LiveKey {
                addr,
                space: SPACE_SLAB,
            },
            bytes: 4096,
            call_site,
            tgid: 1,
            stack_bytes: (frames.len() * 8) as i32,
            comm: [0; 16],
            frames: [0; PROFILE_FRAMES],
        };
        s.frames[..frames.len()].copy_from_slice(frames);
        s
    }

    fn bytes_of<T>(v: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain #[repr(C)] value.
        unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }.to_vec()
    }

    const XATTR: [u64; 4] = [
        0xffff_ffff_8100_0010,
        0xffff_ffff_8100_1010,
        0xffff_ffff_8100_2010,
        0xffff_ffff_8100_3010,
    ];

    #[test]
    fn samples_live_until_freed_and_estimate_bytes() {
        let e = Estimator::of(&gaps(8192));
        let mut p = Profiler::new(e, 8192, LIMITS);
        for i in 0..10u64 {
            p.record(&bytes_of(&sample(0x1000 * i, i, &XATTR, XATTR[2])));
        }
        let free = ProfileFree {
            kind: PROFILE_FREE,
            _pad: 0,
            ts_ns: 20,
            key: LiveKey {
                addr: 0,
                space: SPACE_SLAB,
            },
        };
        p.record(&bytes_of(&free));
        assert_eq!(p.live_samples(), 9);
        let w = e.weight(4096).1;
        let sy = symbols();
        let live = p.live_by_function(Some(&sy));
        let got = live[&(Allocator::Kmalloc, "simple_xattr_alloc".to_string())];
        assert!((got - 9.0 * w).abs() < 1e-6, "{got}");
        let r = p.report(Some(&sy), 0, 1);
        assert_eq!(r.stacks.len(), 1);
        // The tracing frame is trimmed; nothing is an address.
        assert_eq!(
            r.stacks[0].frames,
            ["__kmalloc_noprof", "simple_xattr_alloc", "do_syscall_64"]
        );
        assert!((r.stacks[0].alloc_space - 10.0 * w).abs() < 1e-6);
        assert!((r.stacks[0].inuse_objects - 9.0 * e.weight(4096).0).abs() < 1e-6);
        assert_eq!(p.samples()[&Allocator::Kmalloc], 10);
    }

    #[test]
    fn missed_frees_age_and_reuse_end_samples() {
        let e = Estimator::of(&gaps(8192));
        let mut p = Profiler::new(e, 8192, LIMITS);
        p.record(&bytes_of(&sample(0x1000, 0, &XATTR, 0)));
        // The same address again: the first sample's free was missed.
        p.record(&bytes_of(&sample(0x1000, 10, &XATTR, 0)));
        assert_eq!((p.live_samples(), p.address_reused), (1, 1));
        let missed = ProfileFree {
            kind: PROFILE_MISSED_FREE,
            _pad: 0,
            ts_ns: 20,
            key: LiveKey {
                addr: 0x1000,
                space: SPACE_SLAB,
            },
        };
        p.record(&bytes_of(&missed));
        assert_eq!((p.live_samples(), p.address_reused), (0, 2));
        p.record(&bytes_of(&sample(0x2000, 100, &XATTR, 0)));
        assert!(p.tick(500_000_000).is_empty());
        let old = p.tick(2_000_000_000);
        assert_eq!(old.len(), 1);
        assert_eq!((p.live_samples(), p.aged_out), (0, 1));
        assert_eq!(p.malformed, 0);
        p.record(&[1, 0]);
        assert_eq!(p.malformed, 1);
    }

    #[test]
    fn stacks_beyond_the_limit_go_to_other_and_are_counted() {
        let e = Estimator::of(&gaps(8192));
        let mut p = Profiler::new(e, 8192, LIMITS);
        for i in 0..5u64 {
            let frames = [XATTR[1], 0xffff_ffff_8100_5000 + i, XATTR[3]];
            p.record(&bytes_of(&sample(0x1000 * i, i, &frames, 0)));
        }
        assert_eq!((p.stacks(), p.stacks_full, p.stacks_evicted), (2, 3, 0));
        let sy = symbols();
        let live = p.live_by_function(Some(&sy));
        assert!(live.contains_key(&(Allocator::Kmalloc, "pipe_write".to_string())));
        assert!(live.contains_key(&(Allocator::Kmalloc, "other".to_string())));
        let r = p.report(Some(&sy), 0, 1);
        assert_eq!(r.stacks.len(), 3);
        assert_eq!(r.stacks[2].frames, ["[other]"]);
        let total = |p: &Profiler| -> f64 {
            p.report(None, 0, 1)
                .stacks
                .iter()
                .map(|s| s.alloc_space)
                .sum()
        };
        let before = total(&p);

        // The first stack's sample is freed: a new stack takes its place, and its allocated
        // bytes move to [other]: the profile's total stays whole.
        let free = ProfileFree {
            kind: PROFILE_FREE,
            _pad: 0,
            ts_ns: 9,
            key: LiveKey {
                addr: 0,
                space: SPACE_SLAB,
            },
        };
        p.record(&bytes_of(&free));
        let frames = [XATTR[1], XATTR[2], XATTR[3]];
        p.record(&bytes_of(&sample(0x9000, 10, &frames, 0)));
        assert_eq!((p.stacks(), p.stacks_full, p.stacks_evicted), (2, 3, 1));
        assert!((total(&p) - before - e.weight(4096).1).abs() < 1e-6);
        let live = p.live_by_function(Some(&sy));
        assert!(live.contains_key(&(Allocator::Kmalloc, "simple_xattr_alloc".to_string())));
    }

    #[test]
    fn growing_stacks_are_suspects() {
        let e = Estimator::of(&gaps(4096));
        let mut p = Profiler::new(
            e,
            4096,
            Limits {
                max_stacks: 10,
                ..LIMITS
            },
        );
        let mut addr = 0x10_0000;
        for t in 0..6u64 {
            // The xattr stack grows by 4 samples per tick; pipe_write's stays at one.
            for _ in 0..4 {
                addr += 0x1000;
                p.record(&bytes_of(&sample(addr, t * 1_000_000, &XATTR, 0)));
            }
            let pipe = [XATTR[1], 0xffff_ffff_8100_5010, XATTR[3]];
            p.record(&bytes_of(&sample(0x99_0000, t * 1_000_000, &pipe, 0)));
            p.tick(t * 1_000_000 + 1);
        }
        let sy = symbols();
        let s = p.suspects(Some(&sy), 10_000_000);
        assert_eq!(s.len(), 1, "{s:?}");
        assert_eq!(s[0].function, "simple_xattr_alloc");
        assert_eq!(s[0].live_samples, 24);
        assert!(s[0].growth_bytes_per_second > 0.0);
        assert!((s[0].oldest_age_seconds - 0.01).abs() < 1e-9);
    }
}
