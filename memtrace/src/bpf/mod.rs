//! memtrace's eBPF object: loading it with the running kernel's layouts ([`layout`]), one
//! attach plan per probe ([`attach`]) that the daemon and `memtrace check` share, the loaded
//! programs and their maps ([`tracer`]), the aggregates read from those maps ([`snapshot`])
//! and the notable events of the ring buffer ([`events`]).

pub mod attach;
pub mod events;
pub mod layout;
pub mod snapshot;
pub mod tracer;

use anyhow::anyhow;
use aya::{Ebpf, EbpfLoader};
use memtrace_common::{
    ATTR_CGROUPS, Allocator, GLOBAL_ATTRIBUTION, GLOBAL_FILTER_TGID, GLOBAL_FILTER_TID,
    GLOBAL_FILTERED, GLOBAL_HOOKS_ONLY, GLOBAL_LAYOUTS, GLOBAL_NOTABLE_MIN_BYTES,
    GLOBAL_NOTABLE_MIN_ORDER, GLOBAL_PAGE_SIZE, GLOBAL_TABLE_MASK, Layouts, MAP_CACHE_NAMES,
    MAP_CACHE_STATS, MAP_CACHE_TABLE, MAP_CALLSITES, MAP_CGROUPS, MAP_COMMS, MAP_COUNTERS,
    MAP_EVENTS, MAP_FAILURES, MAP_LIVE, MAP_LIVE_FILTER, MAP_PAGE_ALLOCS, MAP_PAGE_TABLE,
    MAP_PROFILE_EVENTS, MAP_SIZE_STATS, MAP_STACKS, MAP_TABLES, PROBES,
};
use memtrace_common::{GLOBAL_PROFILE_GAPS, GLOBAL_PROFILE_MASK, PROFILE_RING_BYTES, SampleGaps};

pub use attach::{AttachMode, AttachPreference, ProbeStatus};
pub use snapshot::Snapshot;
pub use tracer::{ProfileOptions, Tracer, TracerOptions};

/// The eBPF object, built by build.rs and embedded in the binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace"));

/// Every map memtrace opens by name (to size it, pre-insert its overflow keys or read it).
pub const MAPS: &[&str] = &[
    MAP_TABLES,
    MAP_CACHE_TABLE,
    MAP_PAGE_TABLE,
    MAP_CALLSITES,
    MAP_COMMS,
    MAP_CGROUPS,
    MAP_STACKS,
    MAP_EVENTS,
    MAP_SIZE_STATS,
    MAP_FAILURES,
    MAP_COUNTERS,
    MAP_PAGE_ALLOCS,
    MAP_CACHE_STATS,
    MAP_CACHE_NAMES,
    MAP_LIVE,
    MAP_LIVE_FILTER,
    MAP_PROFILE_EVENTS,
];

/// Every load-time global the loader sets.
pub const GLOBALS: &[&str] = &[
    GLOBAL_LAYOUTS,
    GLOBAL_FILTER_TGID,
    GLOBAL_FILTER_TID,
    GLOBAL_FILTERED,
    GLOBAL_NOTABLE_MIN_BYTES,
    GLOBAL_NOTABLE_MIN_ORDER,
    GLOBAL_ATTRIBUTION,
    GLOBAL_PAGE_SIZE,
    GLOBAL_TABLE_MASK,
    GLOBAL_HOOKS_ONLY,
    GLOBAL_PROFILE_GAPS,
    GLOBAL_PROFILE_MASK,
];

/// Every program memtrace may load: each probe's classic, BTF (generic and fixed-layout),
/// raw and fexit programs, and the fentry feature probe.
pub fn programs() -> impl Iterator<Item = &'static str> {
    PROBES
        .iter()
        .flat_map(|p| {
            [
                Some(p.tp_program),
                Some(p.btf_program),
                p.fixed_program,
                p.raw_program,
                p.fexit.map(|(program, _)| program),
            ]
        })
        .flatten()
        .chain([attach::FENTRY_PROBE])
}

/// `text` with every number that could be a kernel address replaced by `<address>`: hex
/// literals of 12 or more digits, decimal numbers of 15 or more digits, and negative decimals
/// of 10 or more (older verifiers print a known 64-bit value, such as a kernel text address
/// from a load-time global, as a signed 32-bit immediate). The verifier's
/// log prints map pointers as such numbers; memtrace never shows a kernel address (KASLR).
pub fn redact_addresses(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b[i] == b'0' && b.get(i + 1).is_some_and(|c| *c == b'x' || *c == b'X');
        if hex {
            let digits = b[i + 2..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            if digits >= 12 {
                out.push_str("<address>");
                i += 2 + digits;
                continue;
            }
        } else if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            let negative = i > 0 && b[i - 1] == b'-';
            if digits >= 15 || (negative && digits >= 10) {
                out.push_str("<address>");
                i += digits;
                continue;
            }
        }
        // Copy one whole character (the text is UTF-8).
        let len = text[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&text[i..i + len]);
        i += len;
    }
    out
}

/// Loads (creates maps, relocates) the embedded object with its load-time globals.
pub(crate) fn load_object(layouts: &Layouts, opts: &TracerOptions) -> anyhow::Result<Ebpf> {
    // With profiling off the maps are as small as the kernel allows and the programs' profile
    // code is dead (PROFILE_MASK 0).
    let (gaps, mask, live, ring) = match &opts.profile {
        Some(p) => (
            crate::profile::weight::gaps(p.sample_bytes),
            p.filter_mask(),
            p.max_live,
            PROFILE_RING_BYTES,
        ),
        None => (SampleGaps::ZERO, 0, 1, crate::kernel::page_size() as u32),
    };
    EbpfLoader::new()
        .override_global(GLOBAL_PROFILE_GAPS, &gaps, true)
        .override_global(GLOBAL_PROFILE_MASK, &mask, true)
        .map_max_entries(MAP_LIVE, live)
        .map_max_entries(MAP_LIVE_FILTER, mask + 1)
        .map_max_entries(MAP_PROFILE_EVENTS, ring)
        .override_global(GLOBAL_LAYOUTS, layouts, true)
        .override_global(GLOBAL_FILTER_TGID, &opts.filter_tgid, true)
        .override_global(GLOBAL_FILTER_TID, &opts.filter_tid, true)
        .override_global(
            GLOBAL_FILTERED,
            &u32::from(opts.filter_tgid != 0 || opts.filter_tid != 0),
            true,
        )
        .override_global(GLOBAL_NOTABLE_MIN_BYTES, &opts.notable_min_bytes, true)
        .override_global(GLOBAL_NOTABLE_MIN_ORDER, &opts.notable_min_order, true)
        .override_global(GLOBAL_ATTRIBUTION, &opts.attribution, true)
        .override_global(GLOBAL_PAGE_SIZE, &crate::kernel::page_size(), true)
        .override_global(
            GLOBAL_TABLE_MASK,
            &match opts.table_slots {
                0 => u32::MAX,
                n => n.next_power_of_two() - 1,
            },
            true,
        )
        .override_global(GLOBAL_HOOKS_ONLY, &u32::from(opts.hooks_only), true)
        .map_max_entries(MAP_CALLSITES, opts.callsites_max)
        .map_max_entries(MAP_COMMS, opts.comms_max)
        // Off, the map holds only its overflow slots: no per-CPU memory for nothing.
        .map_max_entries(
            MAP_CGROUPS,
            if opts.attribution & ATTR_CGROUPS != 0 {
                opts.cgroups_max
            } else {
                Allocator::ALL.len() as u32
            },
        )
        .load(EBPF_OBJECT)
        .map_err(|e| {
            anyhow!(
                "the kernel refused memtrace's eBPF object: {}",
                crate::sync::one_line(&e)
            )
        })
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF maps against it (before 5.11).
fn bump_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if rc != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use object::{Object as _, ObjectSymbol as _};

    use super::*;

    /// The loader finds programs, maps and globals by name: each name it uses is in the
    /// embedded object, and each program and map of the object is one memtrace uses (a
    /// renamed or forgotten one fails here, not at load time on some kernel).
    #[test]
    fn object_has_every_name_the_loader_uses() {
        let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the embedded object parses");
        let in_object: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
        let used: BTreeSet<&str> = programs().collect();
        assert_eq!(
            used.difference(&in_object).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "programs the loader uses but the object lacks"
        );
        assert_eq!(
            in_object.difference(&used).collect::<Vec<_>>(),
            Vec::<&&str>::new(),
            "programs in the object that no probe uses"
        );
        let maps: BTreeSet<&str> = obj.maps.keys().map(String::as_str).collect();
        // Besides memtrace's own maps the object holds the sections of its globals.
        let own: BTreeSet<&str> = maps
            .iter()
            .copied()
            .filter(|m| !m.starts_with('.'))
            .collect();
        assert_eq!(own, MAPS.iter().copied().collect(), "maps by name");
        let elf = object::File::parse(EBPF_OBJECT).expect("the embedded object is ELF");
        let symbols: BTreeSet<&str> = elf.symbols().filter_map(|s| s.name().ok()).collect();
        for g in GLOBALS {
            assert!(symbols.contains(g), "global {g} missing from the object");
        }
    }

    #[test]
    fn redaction_hides_kernel_addresses_only() {
        let log = "2064: (18) r1 = 0xffff8881042a0a00 ; R1=map_ptr(map=CACHE_TABLE,ks=4,vs=16384)\n\
                   r2 = 18446612686224058880 r3 = 0x9e37 off=0x1f size 4096 ké\n\
                   (b7) r4 = -2103332152 ; umax=4294967295 off=-24";
        let got = redact_addresses(log);
        assert!(!got.contains("ffff8881"), "{got}");
        assert!(!got.contains("18446612686224058880"), "{got}");
        assert!(got.contains("r1 = <address> ;"), "{got}");
        assert!(
            got.contains("r2 = <address> r3 = 0x9e37 off=0x1f size 4096 ké"),
            "{got}"
        );
        assert!(got.contains("map=CACHE_TABLE,ks=4,vs=16384"), "{got}");
        assert!(!got.contains("2103332152"), "{got}");
        assert!(got.contains("umax=4294967295 off=-24"), "{got}");
    }
}
