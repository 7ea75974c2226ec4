//! A heap profile as pprof reads it: a gzip-compressed `perftools.profiles.Profile`
//! (google/pprof's `proto/profile.proto`), laid out as Go's heap profiles are, so that
//! `go tool pprof` and the tools built on it (Grafana Pyroscope, Parca, speedscope) read it
//! as they read a Go heap profile.
//!
//! The messages below are the subset of the schema memtrace writes, with the schema's field
//! numbers. Locations carry function names only, never an address: their one mapping,
//! [`KERNEL_MAPPING`], has no address range either, so nothing in the file depends on (or
//! reveals) where the kernel is loaded. The mapping says its functions are already known,
//! which keeps pprof from trying to symbolize it (and warning that it cannot).

use std::collections::HashMap;
use std::io::Write;

use flate2::{Compression, write::GzEncoder};
use prost::Message;

use super::report::{HeapProfile, Value};

/// The label every sample carries: the allocator its stack allocated from.
pub const ALLOCATOR_LABEL: &str = "allocator";

/// The file name of the profile's one mapping, as `perf` names the kernel's: pprof shows it
/// as the profile's `File`.
pub const KERNEL_MAPPING: &str = "[kernel.kallsyms]";

#[derive(Clone, PartialEq, Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "9")]
    time_nanos: i64,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    period: i64,
    #[prost(int64, tag = "14")]
    default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Sample {
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
struct Label {
    #[prost(int64, tag = "1")]
    key: i64,
    #[prost(int64, tag = "2")]
    str: i64,
}

/// The one mapping: an id, a file name and `has_functions`; no addresses.
#[derive(Clone, PartialEq, Message)]
struct Mapping {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "5")]
    filename: i64,
    #[prost(bool, tag = "7")]
    has_functions: bool,
}

/// A location: an id, the mapping's id and one line naming its function; no address.
#[derive(Clone, PartialEq, Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    mapping_id: u64,
    #[prost(message, repeated, tag = "4")]
    line: Vec<Line>,
}

#[derive(Clone, PartialEq, Message)]
struct Line {
    #[prost(uint64, tag = "1")]
    function_id: u64,
}

#[derive(Clone, PartialEq, Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "3")]
    system_name: i64,
}

/// The string table: each string once, `""` at index 0 as the schema requires.
struct Strings {
    table: Vec<String>,
    index: HashMap<String, i64>,
}

impl Strings {
    fn new() -> Strings {
        let mut s = Strings {
            table: Vec::new(),
            index: HashMap::new(),
        };
        s.id("");
        s
    }

    fn id(&mut self, s: &str) -> i64 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        let i = self.table.len() as i64;
        self.table.push(s.to_string());
        self.index.insert(s.to_string(), i);
        i
    }
}

/// The id of the profile's one mapping, [`KERNEL_MAPPING`].
const MAPPING_ID: u64 = 1;

/// The profile's messages before encoding; ids are assigned in first-seen order, from 1.
fn build(p: &HeapProfile) -> Profile {
    let mut strings = Strings::new();
    let sample_type = Value::ALL
        .iter()
        .map(|v| ValueType {
            r#type: strings.id(v.name()),
            unit: strings.id(v.unit()),
        })
        .collect();
    let period_type = Some(ValueType {
        r#type: strings.id("space"),
        unit: strings.id("bytes"),
    });
    let default_sample_type = strings.id(Value::InuseSpace.name());
    let allocator_key = strings.id(ALLOCATOR_LABEL);
    let mapping = vec![Mapping {
        id: MAPPING_ID,
        filename: strings.id(KERNEL_MAPPING),
        has_functions: true,
    }];

    // One Function and one Location per distinct name: a location id is its function's id.
    let mut location_of: HashMap<&str, u64> = HashMap::new();
    let mut function = Vec::new();
    let mut location = Vec::new();
    let mut sample = Vec::with_capacity(p.stacks.len());
    for s in &p.stacks {
        let value: Vec<i64> = Value::ALL.iter().map(|v| round(v.of(s))).collect();
        if value.iter().all(|&v| v == 0) {
            continue;
        }
        let location_id = s
            .frames_or_unknown()
            .into_iter()
            .map(|name| {
                *location_of.entry(name).or_insert_with(|| {
                    let id = function.len() as u64 + 1;
                    let name = strings.id(name);
                    function.push(Function {
                        id,
                        name,
                        system_name: name,
                    });
                    location.push(Location {
                        id,
                        mapping_id: MAPPING_ID,
                        line: vec![Line { function_id: id }],
                    });
                    id
                })
            })
            .collect();
        sample.push(Sample {
            location_id,
            value,
            label: vec![Label {
                key: allocator_key,
                str: strings.id(&s.allocator),
            }],
        });
    }
    Profile {
        sample_type,
        sample,
        mapping,
        location,
        function,
        string_table: strings.table,
        time_nanos: p.time_nanos,
        duration_nanos: p.duration_nanos,
        period_type,
        period: p.sample_bytes,
        default_sample_type,
    }
}

/// An estimate as a sample value: rounded to the nearest integer (saturating; NaN is 0).
fn round(v: f64) -> i64 {
    v.round() as i64
}

/// The profile as a gzip-compressed `perftools.profiles.Profile`: sample types
/// `alloc_objects`/count, `alloc_space`/bytes, `inuse_objects`/count, `inuse_space`/bytes
/// (Go's heap profile order, `inuse_space` the default), period type space/bytes with
/// period [`HeapProfile::sample_bytes`]; one sample per stack, leaf first, its values
/// rounded and labelled [`ALLOCATOR_LABEL`]. Stacks whose four values all round to zero
/// are left out.
pub fn encode(p: &HeapProfile) -> Vec<u8> {
    let bytes = build(p).encode_to_vec();
    let mut gz = GzEncoder::new(
        Vec::with_capacity(bytes.len() / 2 + 64),
        Compression::default(),
    );
    // Writing to a Vec cannot fail.
    gz.write_all(&bytes).expect("gzip into memory");
    gz.finish().expect("gzip into memory")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::io::Read;
    use std::process::Command;

    use super::*;
    use crate::profile::report::StackTotals;

    fn stack(allocator: &str, frames: &[&str], v: [f64; 4]) -> StackTotals {
        StackTotals {
            allocator: allocator.to_string(),
            frames: frames.iter().map(|f| f.to_string()).collect(),
            alloc_objects: v[0],
            alloc_space: v[1],
            inuse_objects: v[2],
            inuse_space: v[3],
        }
    }

    /// Three stacks from two allocators sharing `do_syscall_64`, and one all-zero stack.
    fn profile() -> HeapProfile {
        HeapProfile {
            stacks: vec![
                stack(
                    "kmalloc",
                    &["__kmalloc_noprof", "seq_read_iter", "do_syscall_64"],
                    [12.4, 6143.6, 3.0, 1536.0],
                ),
                stack(
                    "kmalloc",
                    &["__kmalloc_noprof", "alloc_pipe_info", "do_syscall_64"],
                    [5.0, 2560.0, 5.0, 2560.0],
                ),
                stack(
                    "page",
                    &["__alloc_pages_noprof", "filemap_fault", "do_syscall_64"],
                    [2.0, 8192.0, 1.0, 4096.0],
                ),
                stack("vmalloc", &["vmalloc_noprof"], [0.2, 0.4, 0.0, 0.0]),
            ],
            time_nanos: 1_780_000_000_000_000_000,
            duration_nanos: 30_000_000_000,
            sample_bytes: 524_288,
        }
    }

    fn decode(bytes: &[u8]) -> Profile {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut raw)
            .expect("a gzip stream");
        Profile::decode(raw.as_slice()).expect("a Profile message")
    }

    #[test]
    fn encodes_a_go_heap_profile_layout() {
        let mut p = profile();
        p.stacks
            .push(stack("kmem_cache", &[], [1.0, 64.0, 1.0, 64.0]));
        let d = decode(&encode(&p));
        let s = |i: i64| d.string_table[i as usize].as_str();
        assert_eq!(d.string_table[0], "");
        let types: Vec<(&str, &str)> = d
            .sample_type
            .iter()
            .map(|t| (s(t.r#type), s(t.unit)))
            .collect();
        assert_eq!(
            types,
            [
                ("alloc_objects", "count"),
                ("alloc_space", "bytes"),
                ("inuse_objects", "count"),
                ("inuse_space", "bytes"),
            ]
        );
        assert_eq!(s(d.default_sample_type), "inuse_space");
        let pt = d.period_type.as_ref().expect("a period type");
        assert_eq!((s(pt.r#type), s(pt.unit)), ("space", "bytes"));
        assert_eq!(d.period, 524_288);
        assert_eq!(d.time_nanos, p.time_nanos);
        assert_eq!(d.duration_nanos, p.duration_nanos);

        // The all-zero vmalloc stack is left out; the empty one is one `[unknown]` frame.
        assert_eq!(d.sample.len(), 4);
        assert_eq!(d.sample[0].value, [12, 6144, 3, 1536]);
        let names: Vec<&str> = d.function.iter().map(|f| s(f.name)).collect();
        assert_eq!(
            names,
            [
                "__kmalloc_noprof",
                "seq_read_iter",
                "do_syscall_64",
                "alloc_pipe_info",
                "__alloc_pages_noprof",
                "filemap_fault",
                "[unknown]",
            ]
        );
        assert_eq!(d.mapping.len(), 1);
        assert_eq!(
            (d.mapping[0].id, s(d.mapping[0].filename)),
            (1, "[kernel.kallsyms]")
        );
        assert!(d.mapping[0].has_functions);
        for (i, (f, l)) in d.function.iter().zip(&d.location).enumerate() {
            assert_eq!((f.id, l.id, l.mapping_id), (i as u64 + 1, i as u64 + 1, 1));
            assert_eq!(f.system_name, f.name);
            assert_eq!(l.line, [Line { function_id: f.id }]);
        }
        assert_eq!(d.sample[1].location_id, [1, 4, 3]);
        assert_eq!(d.sample[3].location_id, [7]);
        let label = &d.sample[3].label[0];
        assert_eq!((s(label.key), s(label.str)), ("allocator", "kmem_cache"));
    }

    /// Runs `go tool pprof` with `args` on `file`; fails (never skips) without Go.
    fn go_pprof(dir: &std::path::Path, args: &[&str], file: &std::path::Path) -> String {
        let out = Command::new("go")
            .args(["tool", "pprof"])
            .args(args)
            .arg(file)
            .env("HOME", dir)
            .env("GOCACHE", dir.join("gocache"))
            .env("GOPATH", dir.join("gopath"))
            .env("GOTOOLCHAIN", "local")
            .env("PPROF_TMPDIR", dir)
            .output()
            .unwrap_or_else(|e| {
                panic!("running `go tool pprof` failed ({e}): run cargo xtask setup (installs golang-go)")
            });
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "go tool pprof {args:?} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        // No warning either (pprof warns about a mapping it would have to symbolize).
        assert_eq!(stderr, "", "go tool pprof {args:?} warned");
        stdout
    }

    /// One sample as `go tool pprof -raw` prints it.
    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct RawSample {
        frames: Vec<String>,
        values: Vec<i64>,
        labels: String,
    }

    /// The parts of `go tool pprof -raw` (the Go profile package's `Profile.String`) the test
    /// checks: the header lines, the sample types, each sample with its frames resolved, and
    /// the mapping lines.
    fn parse_raw(raw: &str) -> (BTreeMap<String, String>, String, Vec<RawSample>, Vec<&str>) {
        let mut header = BTreeMap::new();
        let mut lines = raw.lines();
        for l in lines.by_ref() {
            if l == "Samples:" {
                break;
            }
            if let Some((k, v)) = l.split_once(": ") {
                header.insert(k.to_string(), v.to_string());
            }
        }
        let types = lines.next().expect("a sample type line").to_string();
        let mut samples: Vec<(Vec<i64>, Vec<u64>, String)> = Vec::new();
        for l in lines.by_ref() {
            if l == "Locations" {
                break;
            }
            if let Some((values, ids)) = l.split_once(':').filter(|_| l.contains(": ")) {
                let values = values
                    .split_whitespace()
                    .map(|v| v.parse().unwrap())
                    .collect();
                let ids = ids.split_whitespace().map(|v| v.parse().unwrap()).collect();
                samples.push((values, ids, String::new()));
            } else {
                let last = samples.last_mut().expect("a label line after a sample");
                last.2 = l.trim().to_string();
            }
        }
        let mut names = BTreeMap::new();
        for l in lines.by_ref() {
            if l == "Mappings" {
                break;
            }
            let (id, rest) = l.trim().split_once(": ").expect("an `id: location` line");
            // `0x0 M=1 name :0 s=0`.
            let mut rest = rest.split_whitespace();
            assert_eq!(rest.next(), Some("0x0"), "a location with an address: {l}");
            assert_eq!(
                rest.next(),
                Some("M=1"),
                "a location outside the mapping: {l}"
            );
            let name = rest.next().expect("a function name").to_string();
            names.insert(id.parse::<u64>().unwrap(), name);
        }
        let samples = samples
            .into_iter()
            .map(|(values, ids, labels)| RawSample {
                frames: ids.iter().map(|id| names[id].clone()).collect(),
                values,
                labels,
            })
            .collect();
        (header, types, samples, lines.map(str::trim).collect())
    }

    #[test]
    fn go_tool_pprof_reads_it() {
        let dir = std::env::temp_dir().join(format!("memtrace-pprof-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("heap.pb.gz");
        std::fs::write(&file, encode(&profile())).unwrap();

        let raw = go_pprof(&dir, &["-raw"], &file);
        // No kernel address (nor any address) anywhere in what pprof decodes: every hex
        // number it prints (locations, its own stand-in mapping) is zero.
        assert!(!raw.to_lowercase().contains("0xffff"), "{raw}");
        for (at, _) in raw.match_indices("0x") {
            let digits: String = raw[at + 2..]
                .chars()
                .take_while(char::is_ascii_hexdigit)
                .collect();
            assert!(
                digits.chars().all(|c| c == '0'),
                "an address 0x{digits}:\n{raw}"
            );
        }
        let (header, types, mut samples, mappings) = parse_raw(&raw);
        assert_eq!(
            mappings,
            ["1: 0x0/0x0/0x0 [kernel.kallsyms]  [FN]"],
            "{raw}"
        );
        assert_eq!(header["PeriodType"], "space bytes", "{raw}");
        assert_eq!(header["Period"], "524288", "{raw}");
        assert_eq!(header["Duration"], "30s", "{raw}");
        assert_eq!(
            types,
            "alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes[dflt]"
        );
        samples.sort();
        let want = |frames: &[&str], values: [i64; 4], allocator: &str| RawSample {
            frames: frames.iter().map(|f| f.to_string()).collect(),
            values: values.to_vec(),
            labels: format!("allocator:[{allocator}]"),
        };
        assert_eq!(
            samples,
            [
                want(
                    &["__alloc_pages_noprof", "filemap_fault", "do_syscall_64"],
                    [2, 8192, 1, 4096],
                    "page"
                ),
                want(
                    &["__kmalloc_noprof", "alloc_pipe_info", "do_syscall_64"],
                    [5, 2560, 5, 2560],
                    "kmalloc"
                ),
                want(
                    &["__kmalloc_noprof", "seq_read_iter", "do_syscall_64"],
                    [12, 6144, 3, 1536],
                    "kmalloc"
                ),
            ],
            "{raw}"
        );

        // pprof's own aggregation: the shared frame carries every stack's objects, the
        // allocator tag splits them, and inuse_space is the default.
        let top = go_pprof(&dir, &["-top", "-sample_index=alloc_objects"], &file);
        assert!(
            top.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["0", "0%", "100%", "19", "100%", "do_syscall_64"]),
            "{top}"
        );
        let tags = go_pprof(&dir, &["-tags", "-sample_index=alloc_objects"], &file);
        let tags: Vec<&str> = tags.lines().map(str::trim).collect();
        for want in [
            "allocator: Total 19.0",
            "17.0 (89.47%): kmalloc",
            "2.0 (10.53%): page",
        ] {
            assert!(tags.contains(&want), "{want:?} in {tags:#?}");
        }
        let default = go_pprof(&dir, &["-top"], &file);
        assert!(default.contains("File: [kernel.kallsyms]"), "{default}");
        assert!(default.contains("Type: inuse_space"), "{default}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
