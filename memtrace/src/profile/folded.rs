//! A heap profile as folded (collapsed) stacks, the input of Brendan Gregg's
//! `flamegraph.pl`, inferno and speedscope: one line per stack, frames root first joined
//! with `;`, a space, then the value.
//!
//! The allocator is the root-most frame, so one flame graph shows each allocator's share
//! as its own tower: `kmalloc;do_syscall_64;...;__kmalloc 123456`.

use std::collections::BTreeMap;
use std::io::Write;

use super::report::{HeapProfile, UNKNOWN_FRAME, Value};

/// A name as one frame of a folded line: `;` (the frame separator) becomes `:`, control
/// characters (a newline would end the line) become spaces, and the ends are trimmed (the
/// last space on a line separates the value). A name left empty is [`UNKNOWN_FRAME`].
fn frame(name: &str) -> String {
    let clean: String = name
        .chars()
        .map(|c| match c {
            ';' => ':',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect();
    let trimmed = clean.trim();
    if trimmed.is_empty() {
        UNKNOWN_FRAME.to_string()
    } else {
        trimmed.to_string()
    }
}

/// Writes `value` of every stack as folded lines, sorted by stack. Stacks that fold to the
/// same line (the same allocator and frames) are merged, their values summed before
/// rounding to an integer; a line whose value rounds to zero or less is left out (flame
/// graphs have no negative widths).
pub fn write(p: &HeapProfile, value: Value, out: &mut dyn Write) -> std::io::Result<()> {
    let mut lines: BTreeMap<String, f64> = BTreeMap::new();
    for s in &p.stacks {
        let mut line = frame(&s.allocator);
        for name in s.frames_or_unknown().into_iter().rev() {
            line.push(';');
            line.push_str(&frame(name));
        }
        *lines.entry(line).or_insert(0.0) += value.of(s);
    }
    for (line, v) in lines {
        let v = v.round() as i64;
        if v > 0 {
            writeln!(out, "{line} {v}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::report::StackTotals;

    fn stack(allocator: &str, frames: &[&str], alloc_space: f64, inuse_space: f64) -> StackTotals {
        StackTotals {
            allocator: allocator.to_string(),
            frames: frames.iter().map(|f| f.to_string()).collect(),
            alloc_objects: 1.0,
            alloc_space,
            inuse_objects: 0.0,
            inuse_space,
        }
    }

    fn folded(p: &HeapProfile, value: Value) -> String {
        let mut out = Vec::new();
        write(p, value, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn root_first_merged_sorted_without_zeros() {
        let p = HeapProfile {
            stacks: vec![
                stack("page", &["__alloc_pages", "filemap_fault"], 8192.0, 4096.0),
                // The same line twice (two kernel stacks that symbolize alike): summed
                // before rounding.
                stack(
                    "kmalloc",
                    &["__kmalloc", "seq_read", "do_syscall_64"],
                    100.4,
                    0.3,
                ),
                stack(
                    "kmalloc",
                    &["__kmalloc", "seq_read", "do_syscall_64"],
                    23.4,
                    0.3,
                ),
                // Same frames, another allocator: another line.
                stack(
                    "kmem_cache",
                    &["__kmalloc", "seq_read", "do_syscall_64"],
                    64.0,
                    0.0,
                ),
                // Rounds to zero: left out.
                stack("vmalloc", &["vmalloc"], 0.4, 0.0),
                // Unreadable stack.
                stack("percpu", &[], 16.0, 16.0),
            ],
            time_nanos: 0,
            duration_nanos: 0,
            sample_bytes: 4096,
        };
        assert_eq!(
            folded(&p, Value::AllocSpace),
            "kmalloc;do_syscall_64;seq_read;__kmalloc 124\n\
             kmem_cache;do_syscall_64;seq_read;__kmalloc 64\n\
             page;filemap_fault;__alloc_pages 8192\n\
             percpu;[unknown] 16\n"
        );
        // 0.3 + 0.3 rounds to 1; kmem_cache's 0 and vmalloc's are left out.
        assert_eq!(
            folded(&p, Value::InuseSpace),
            "kmalloc;do_syscall_64;seq_read;__kmalloc 1\n\
             page;filemap_fault;__alloc_pages 4096\n\
             percpu;[unknown] 16\n"
        );
        assert_eq!(folded(&p, Value::InuseObjects), "");
    }

    #[test]
    fn frame_names_cannot_break_the_format() {
        let p = HeapProfile {
            stacks: vec![stack(
                "kmalloc",
                &["a;b", " trailing \n", "", "two words"],
                1.0,
                0.0,
            )],
            time_nanos: 0,
            duration_nanos: 0,
            sample_bytes: 4096,
        };
        assert_eq!(
            folded(&p, Value::AllocSpace),
            "kmalloc;two words;[unknown];trailing;a:b 1\n"
        );
    }
}
