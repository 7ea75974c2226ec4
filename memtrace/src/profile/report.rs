//! What a heap profile holds once estimated: one set of totals per kernel stack, already
//! symbolized (names only, never addresses). The encoders in [`super::pprof`] and
//! [`super::folded`] read it; nothing here knows about the kernel.

use serde::Serialize;

/// The sample types of a heap profile, in pprof's order (as Go's heap profiles).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Value {
    /// Objects allocated over the profile's duration.
    #[value(name = "alloc_objects")]
    AllocObjects,
    /// Bytes allocated over the profile's duration.
    #[value(name = "alloc_space")]
    AllocSpace,
    /// Objects allocated and not yet freed at the profile's end.
    #[value(name = "inuse_objects")]
    InuseObjects,
    /// Bytes allocated and not yet freed at the profile's end.
    #[value(name = "inuse_space")]
    InuseSpace,
}

impl Value {
    /// Every sample type, in pprof's order: a profile's sample values follow it.
    pub const ALL: [Value; 4] = [
        Value::AllocObjects,
        Value::AllocSpace,
        Value::InuseObjects,
        Value::InuseSpace,
    ];

    /// This value of a stack's totals.
    pub fn of(self, s: &StackTotals) -> f64 {
        match self {
            Value::AllocObjects => s.alloc_objects,
            Value::AllocSpace => s.alloc_space,
            Value::InuseObjects => s.inuse_objects,
            Value::InuseSpace => s.inuse_space,
        }
    }

    /// The sample type's name, as pprof and the command line spell it.
    pub fn name(self) -> &'static str {
        match self {
            Value::AllocObjects => "alloc_objects",
            Value::AllocSpace => "alloc_space",
            Value::InuseObjects => "inuse_objects",
            Value::InuseSpace => "inuse_space",
        }
    }

    /// The sample type's unit: `count` for objects, `bytes` for space.
    pub fn unit(self) -> &'static str {
        match self {
            Value::AllocObjects | Value::InuseObjects => "count",
            Value::AllocSpace | Value::InuseSpace => "bytes",
        }
    }
}

/// One kernel stack's estimated totals (weighted samples; see the estimator in profile::weight).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StackTotals {
    /// The allocator label value: "kmalloc", "kmem_cache", "page", "vmalloc", "percpu".
    pub allocator: String,
    /// Symbolized function names, innermost (leaf) first; never addresses. May be empty
    /// (stack unreadable): the encoders then write a single frame `[unknown]`.
    pub frames: Vec<String>,
    /// Estimated objects allocated.
    pub alloc_objects: f64,
    /// Estimated bytes allocated.
    pub alloc_space: f64,
    /// Estimated objects still allocated at the profile's end.
    pub inuse_objects: f64,
    /// Estimated bytes still allocated at the profile's end.
    pub inuse_space: f64,
}

/// A heap profile: the stacks' totals and when and how they were sampled.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HeapProfile {
    /// One entry per kernel stack (and allocator).
    pub stacks: Vec<StackTotals>,
    /// Wall-clock start of the profile, nanoseconds since the Unix epoch.
    pub time_nanos: i64,
    /// Nanoseconds the profile covers.
    pub duration_nanos: i64,
    /// The sampling mean in bytes (--profile.sample-bytes): pprof's `period`.
    pub sample_bytes: i64,
}

/// The frame a stack with no readable frames is written with.
pub const UNKNOWN_FRAME: &str = "[unknown]";

impl StackTotals {
    /// The stack's frames, leaf first, or the single frame [`UNKNOWN_FRAME`] when it has none.
    pub fn frames_or_unknown(&self) -> Vec<&str> {
        if self.frames.is_empty() {
            vec![UNKNOWN_FRAME]
        } else {
            self.frames.iter().map(String::as_str).collect()
        }
    }
}
