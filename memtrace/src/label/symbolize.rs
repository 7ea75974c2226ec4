//! Kernel addresses to symbol names, from `/proc/kallsyms`.
//!
//! Kernel addresses (allocation call sites, stack frames) are kept as map keys inside memtrace
//! but never shown to users: under KASLR they reveal the kernel's randomised base. This module
//! turns them into function names (for metric labels) or `function+0xoffset [module]` (for
//! `memtrace trace`), neither of which contains an absolute address.
//!
//! [`Symbolizer`] is one immutable table parsed from kallsyms; [`Cached`] wraps it and reloads it
//! when the set of loaded kernel modules changes.
//!
//! Root (or anyone with `kernel.kptr_restrict=0`) sees real addresses in kallsyms; everyone else
//! sees zeros, which is reported as [`SymbolizeError::Hidden`] rather than as an empty table.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::kernel::{KALLSYMS_PATH, MODULES_PATH};

/// The largest distance from a symbol's start that still counts as inside it (1 MiB).
///
/// kallsyms gives only start addresses, so the last symbol of the kernel text or of a module
/// would otherwise swallow every address above it. No kernel function comes close to this size.
pub const MAX_OFFSET: u64 = 1 << 20;

use super::UNKNOWN;

/// The module index of a symbol of the core kernel.
const NO_MODULE: u16 = u16::MAX;

/// Why a symbol table could not be loaded. Each message is one line and never contains a kernel
/// address.
#[derive(Debug, thiserror::Error)]
pub enum SymbolizeError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// Every address in the file is zero: the kernel hides them from this user.
    #[error("kallsyms addresses are hidden (all zero): run as root or set kernel.kptr_restrict=0")]
    Hidden,
    /// The file holds no text symbol (an empty file stands in for it).
    #[error("{path} holds no text symbol")]
    Empty { path: String },
    /// A line is not `ADDRESS TYPE NAME [\t[MODULE]]`.
    #[error("malformed {path} line {line}: {what}")]
    Malformed {
        path: String,
        line: usize,
        what: String,
    },
}

/// A resolved address: the function containing it, the distance from the function's start and,
/// for module code, the module's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Symbol {
    /// The function's name, e.g. `kfree`.
    pub function: String,
    /// The distance of the address from the function's start, in bytes.
    pub offset: u64,
    /// The module the function belongs to (`foo` for `[foo]` in kallsyms); `None` for the core
    /// kernel.
    pub module: Option<String>,
}

impl Symbol {
    /// `func+0x1f` or `func+0x1f [module]`, as the kernel prints stack frames. For
    /// `memtrace trace` only (the offset makes it unfit for a metric label); never an absolute
    /// address.
    pub fn with_offset(&self) -> String {
        match &self.module {
            Some(m) => format!("{}+{:#x} [{m}]", self.function, self.offset),
            None => format!("{}+{:#x}", self.function, self.offset),
        }
    }
}

/// One text symbol: 16 bytes, its name a range of [`Symbolizer::names`].
#[derive(Clone, Copy)]
struct Entry {
    addr: u64,
    name_start: u32,
    name_len: u16,
    module: u16,
}

/// A symbol table from `/proc/kallsyms`.
///
/// Only text symbols are kept (types `t`, `T`, `w`, `W`); data, bss, read-only and absolute
/// symbols are skipped, so an address in data resolves to the text symbol below it only if that
/// lies within [`MAX_OFFSET`] (callers pass code addresses). Module symbols keep their module's
/// name. Symbols at address zero are skipped.
///
/// Several symbols may share an address (aliases such as `_text` and `_stext`). One is kept: a
/// global `T` over a weak `W` over a local `t` over a local weak `w`, and among equals the first in
/// file order. The choice depends only on the file's content.
///
/// The table is a sorted `Vec` of 16-byte entries whose names are ranges of one `String`, so a
/// real kernel's ~100k–250k symbols take a few megabytes and a lookup is a binary search.
/// `Debug` prints sizes only, never addresses.
pub struct Symbolizer {
    /// Sorted by address, one entry per address.
    entries: Vec<Entry>,
    /// Every kept name, concatenated.
    names: String,
    /// Module names, indexed by [`Entry::module`].
    modules: Vec<String>,
    loaded_at: Instant,
    /// The fingerprint of the modules file read just before this table (0 when not loaded from
    /// files or the modules file was unreadable).
    modules_fingerprint: u64,
}

impl fmt::Debug for Symbolizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Symbolizer")
            .field("symbols", &self.entries.len())
            .field("modules", &self.modules.len())
            .field("loaded_at", &self.loaded_at)
            .finish()
    }
}

impl Symbolizer {
    /// Loads the running kernel's table from `/proc/kallsyms`.
    pub fn load() -> Result<Symbolizer, SymbolizeError> {
        Self::load_paths(Path::new(KALLSYMS_PATH), Path::new(MODULES_PATH))
    }

    /// Fingerprints `modules` first, then reads `kallsyms`: a module loaded in between makes the
    /// fingerprint stale, which only causes one extra reload later, never a missed one. A file
    /// without a text symbol is [`SymbolizeError::Empty`]: no table at all is more honest than
    /// one that resolves nothing.
    fn load_paths(kallsyms: &Path, modules: &Path) -> Result<Symbolizer, SymbolizeError> {
        let fingerprint = modules_fingerprint(modules);
        let bytes = std::fs::read(kallsyms).map_err(|source| SymbolizeError::Read {
            path: kallsyms.display().to_string(),
            source,
        })?;
        // Symbol names are ASCII; a stray invalid byte must not make the whole table unusable.
        let text = match String::from_utf8(bytes) {
            Ok(t) => t,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        };
        let path = kallsyms.display().to_string();
        let mut table = Self::from_kallsyms(&text, &path)?;
        if table.is_empty() {
            return Err(SymbolizeError::Empty { path });
        }
        table.modules_fingerprint = fingerprint;
        Ok(table)
    }

    /// Parses kallsyms text; `path` names the source in errors.
    ///
    /// Blank lines are ignored. A file with at least one symbol whose addresses are all zero is
    /// [`SymbolizeError::Hidden`]; an empty file is an empty table.
    pub fn from_kallsyms(text: &str, path: &str) -> Result<Symbolizer, SymbolizeError> {
        let malformed = |line: usize, what: &str| SymbolizeError::Malformed {
            path: path.to_string(),
            line,
            what: what.to_string(),
        };
        // (entry, rank): the rank orders aliases, see the type's documentation.
        let mut staged: Vec<(Entry, u8)> = Vec::with_capacity(text.len() / 40);
        let mut names = String::with_capacity(text.len() / 2);
        let mut modules: Vec<String> = Vec::new();
        let mut module_ids: HashMap<&str, u16> = HashMap::new();
        let mut any_symbol = false;
        let mut any_nonzero = false;

        for (index, line) in text.lines().enumerate() {
            let lineno = index + 1;
            let mut fields = line.split_ascii_whitespace();
            let Some(addr) = fields.next() else {
                continue;
            };
            // Never echo the field: a near-address must not end up in a log.
            let addr = parse_hex(addr).ok_or_else(|| malformed(lineno, "address is not hex"))?;
            let kind = fields
                .next()
                .ok_or_else(|| malformed(lineno, "missing symbol type"))?;
            let &[kind] = kind.as_bytes() else {
                return Err(malformed(lineno, "symbol type is not one character"));
            };
            let name = fields
                .next()
                .ok_or_else(|| malformed(lineno, "missing symbol name"))?;
            let module = match fields.next() {
                None => None,
                Some(m) => Some(
                    m.strip_prefix('[')
                        .and_then(|m| m.strip_suffix(']'))
                        .filter(|m| !m.is_empty())
                        .ok_or_else(|| malformed(lineno, "module name is not in [brackets]"))?,
                ),
            };
            if fields.next().is_some() {
                return Err(malformed(lineno, "too many fields"));
            }
            any_symbol = true;
            any_nonzero |= addr != 0;

            let Some(rank) = text_rank(kind) else {
                continue;
            };
            if addr == 0 {
                continue;
            }
            let name_len = u16::try_from(name.len())
                .map_err(|_| malformed(lineno, "symbol name is too long"))?;
            let name_start = u32::try_from(names.len())
                .map_err(|_| malformed(lineno, "too many symbol names"))?;
            let module = match module {
                None => NO_MODULE,
                Some(m) => match module_ids.get(m) {
                    Some(&id) => id,
                    None => {
                        let id = u16::try_from(modules.len())
                            .ok()
                            .filter(|&id| id != NO_MODULE)
                            .ok_or_else(|| malformed(lineno, "too many modules"))?;
                        modules.push(m.to_string());
                        module_ids.insert(m, id);
                        id
                    }
                },
            };
            names.push_str(name);
            staged.push((
                Entry {
                    addr,
                    name_start,
                    name_len,
                    module,
                },
                rank,
            ));
        }
        if any_symbol && !any_nonzero {
            return Err(SymbolizeError::Hidden);
        }

        // Stable sort: among aliases of equal rank the first in file order comes first, and
        // `dedup_by_key` keeps the first of each run.
        staged.sort_by_key(|(e, rank)| (e.addr, *rank));
        staged.dedup_by_key(|(e, _)| e.addr);

        // Copy the kept names into an exactly sized string (dropping the aliases' names).
        let kept: usize = staged.iter().map(|(e, _)| usize::from(e.name_len)).sum();
        let mut compact = String::with_capacity(kept);
        let mut entries = Vec::with_capacity(staged.len());
        for (e, _) in staged {
            let start = e.name_start as usize;
            let name = names
                .get(start..start + usize::from(e.name_len))
                .unwrap_or_default();
            // `compact` is no longer than `names`, whose offsets fit in u32.
            let name_start = u32::try_from(compact.len()).unwrap_or(u32::MAX);
            compact.push_str(name);
            entries.push(Entry { name_start, ..e });
        }

        Ok(Symbolizer {
            entries,
            names: compact,
            modules,
            loaded_at: Instant::now(),
            modules_fingerprint: 0,
        })
    }

    /// The symbol containing `addr`: the one with the greatest start `<= addr`.
    ///
    /// `None` for 0, for addresses below the first symbol, and for addresses more than
    /// [`MAX_OFFSET`] past the nearest symbol start (beyond the end of the kernel text or of a
    /// module).
    pub fn resolve(&self, addr: u64) -> Option<Symbol> {
        let e = self.lookup(addr)?;
        Some(Symbol {
            function: self.name(e).to_string(),
            offset: addr - e.addr,
            module: self.module(e).map(str::to_string),
        })
    }

    /// The function name only, for metric labels: the function of [`resolve`](Self::resolve),
    /// else `"unknown"`. Never contains the address.
    pub fn function(&self, addr: u64) -> String {
        self.function_str(addr).to_string()
    }

    /// Like [`function`](Self::function) without allocating.
    pub fn function_str(&self, addr: u64) -> &str {
        self.lookup(addr).map_or(UNKNOWN, |e| self.name(e))
    }

    /// The number of symbols (one per distinct address).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no symbol.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// When this table was parsed.
    pub fn loaded_at(&self) -> Instant {
        self.loaded_at
    }

    fn lookup(&self, addr: u64) -> Option<&Entry> {
        if addr == 0 {
            return None;
        }
        let i = self.entries.partition_point(|e| e.addr <= addr);
        let e = self.entries.get(i.checked_sub(1)?)?;
        (addr - e.addr <= MAX_OFFSET).then_some(e)
    }

    fn name(&self, e: &Entry) -> &str {
        let start = e.name_start as usize;
        self.names
            .get(start..start + usize::from(e.name_len))
            .unwrap_or(UNKNOWN)
    }

    fn module(&self, e: &Entry) -> Option<&str> {
        if e.module == NO_MODULE {
            return None;
        }
        self.modules.get(usize::from(e.module)).map(String::as_str)
    }
}

/// The preference among aliases (lower wins), or `None` for a symbol that is not text.
fn text_rank(kind: u8) -> Option<u8> {
    match kind {
        b'T' => Some(0),
        b'W' => Some(1),
        b't' => Some(2),
        b'w' => Some(3),
        _ => None,
    }
}

/// 1 to 16 hex digits, nothing else (no sign, no `0x`).
fn parse_hex(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, b| {
        let digit = (b as char).to_digit(16)?;
        Some(acc << 4 | u64::from(digit))
    })
}

/// A cheap fingerprint of the modules file (FNV-1a); 0 when it cannot be read (e.g. a kernel
/// without module support has no `/proc/modules`, and then nothing can change).
///
/// Of each `/proc/modules` line (`name size refcount deps state address`) only the name, size,
/// state and address count: the use count changes whenever a module is used, which does not
/// change kallsyms. A line of another shape counts whole.
fn modules_fingerprint(path: &Path) -> u64 {
    std::fs::read(path).map_or(0, |bytes| fingerprint_modules(&bytes))
}

fn fingerprint_modules(bytes: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    let mut feed = |part: &[u8]| {
        for &b in part.iter().chain(b"\n") {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(PRIME);
        }
    };
    for line in bytes.split(|&b| b == b'\n') {
        let mut fields = line
            .split(|b| b.is_ascii_whitespace())
            .filter(|f| !f.is_empty());
        let picked: [Option<&[u8]>; 6] = std::array::from_fn(|_| fields.next());
        match picked {
            [
                Some(name),
                Some(size),
                Some(_),
                Some(_),
                Some(state),
                Some(addr),
            ] => {
                for part in [name, size, state, addr] {
                    feed(part);
                }
            }
            _ => feed(line),
        }
    }
    // 0 stands for "unreadable".
    hash.max(1)
}

/// A [`Symbolizer`] that reloads itself when kernel modules change.
///
/// [`refresh`](Self::refresh) checks the modules file at most once per `min_interval`; when
/// its fingerprint differs from the one taken before the last load attempt, kallsyms is
/// loaded again. A failed load keeps the previous table (if any) and its one-line reason
/// ([`status`](Self::status)); it is retried only after the modules change again, so a lasting
/// failure costs no repeated reads of the large kallsyms file. Whoever reports the status logs
/// it (the daemon's `symbolizer` collector, once per change of state): this type logs nothing.
pub struct Cached {
    /// The last table loaded; `None` until a load succeeds.
    table: Option<Symbolizer>,
    /// Why the last load attempt failed; `None` once one succeeds.
    error: Option<String>,
    kallsyms: PathBuf,
    modules: PathBuf,
    min_interval: Duration,
    last_check: Instant,
    /// The modules fingerprint of the last load attempt, successful or not.
    attempted: u64,
    reloads: u64,
}

impl fmt::Debug for Cached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cached")
            .field("table", &self.table)
            .field("error", &self.error)
            .field("kallsyms", &self.kallsyms)
            .field("modules", &self.modules)
            .field("min_interval", &self.min_interval)
            .field("reloads", &self.reloads)
            .finish()
    }
}

impl Cached {
    /// Loads `/proc/kallsyms` and watches `/proc/modules`. A failed load is not an error
    /// here: it is the [`status`](Self::status), and the load is tried again when the modules
    /// change.
    pub fn new(min_interval: Duration) -> Cached {
        Self::with_paths(
            PathBuf::from(KALLSYMS_PATH),
            PathBuf::from(MODULES_PATH),
            min_interval,
        )
    }

    /// Like [`new`](Self::new) with other files (for tests). An unreadable modules file is not an
    /// error: it fingerprints as "unreadable" and triggers a reload only when that changes.
    pub fn with_paths(kallsyms: PathBuf, modules: PathBuf, min_interval: Duration) -> Cached {
        let mut c = Cached {
            table: None,
            error: None,
            kallsyms,
            modules,
            min_interval,
            last_check: Instant::now(),
            attempted: 0,
            reloads: 0,
        };
        c.attempted = modules_fingerprint(&c.modules);
        c.load();
        c
    }

    /// The current table, as last loaded (no check of the modules: see
    /// [`refresh`](Self::refresh)); `None` if no load has succeeded.
    pub fn table(&self) -> Option<&Symbolizer> {
        self.table.as_ref()
    }

    /// Reloads the table if the modules changed (checked at most once per `min_interval`), and
    /// returns the [`status`](Self::status).
    pub fn refresh(&mut self) -> Result<(), String> {
        if self.last_check.elapsed() >= self.min_interval {
            self.last_check = Instant::now();
            let fingerprint = modules_fingerprint(&self.modules);
            if fingerprint != self.attempted {
                self.attempted = fingerprint;
                if self.load() {
                    self.reloads += 1;
                }
            }
        }
        self.status()
    }

    /// `Ok` when a table is loaded and the last load attempt succeeded; else why not, in one
    /// line (never with an address).
    pub fn status(&self) -> Result<(), String> {
        match (&self.table, &self.error) {
            (Some(_), None) => Ok(()),
            (Some(_), Some(e)) => Err(format!(
                "kernel modules changed but the symbol table could not be reloaded ({e}); \
                 keeping the previous one"
            )),
            (None, Some(e)) => Err(format!(
                "call sites cannot be symbolized ({e}); function labels read \"unknown\""
            )),
            (None, None) => Err("no symbol table loaded".to_string()),
        }
    }

    /// How many times the table has been reloaded (after a change of the modules) since
    /// construction.
    pub fn reloads(&self) -> u64 {
        self.reloads
    }

    /// One load attempt: the new table, or the reason kept. Whether it succeeded.
    fn load(&mut self) -> bool {
        match Symbolizer::load_paths(&self.kallsyms, &self.modules) {
            Ok(table) => {
                // The fingerprint taken just before this read; if the modules changed since,
                // the next check sees it.
                self.attempted = table.modules_fingerprint;
                self.table = Some(table);
                self.error = None;
                true
            }
            Err(e) => {
                self.error = Some(e.to_string());
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const BASIC: &str = include_str!("../../testdata/kallsyms/basic.txt");
    const TEXT: u64 = 0xffff_ffff_8100_0000;
    const FOO: u64 = 0xffff_ffff_c0a0_1000;
    const BAR: u64 = 0xffff_ffff_c0b0_0000;

    fn basic() -> Symbolizer {
        Symbolizer::from_kallsyms(BASIC, "basic.txt").expect("fixture parses")
    }

    fn sym(function: &str, offset: u64, module: Option<&str>) -> Symbol {
        Symbol {
            function: function.to_string(),
            offset,
            module: module.map(str::to_string),
        }
    }

    #[test]
    fn keeps_text_symbols_one_per_address() {
        let s = basic();
        // 0x0, 0x100, 0x200, 0x300, 0x400, 0x800, bar x2, foo x2, bpf.
        assert_eq!(s.len(), 11);
        assert!(!s.is_empty());
        for skipped in [TEXT + 0x500, TEXT + 0x600, TEXT + 0x700, FOO + 0x100] {
            assert_ne!(s.resolve(skipped).map(|x| x.offset), Some(0));
        }
    }

    #[test]
    fn resolves_exact_starts_and_middles() {
        let s = basic();
        assert_eq!(s.resolve(TEXT + 0x400), Some(sym("kfree", 0, None)));
        assert_eq!(s.resolve(TEXT + 0x41f), Some(sym("kfree", 0x1f, None)));
        assert_eq!(s.resolve(TEXT + 0x200), Some(sym("weak_fn", 0, None)));
        assert_eq!(s.resolve(TEXT + 0x3ff), Some(sym("weak_local", 0xff, None)));
        // Data symbols are skipped, so data addresses fall to the text symbol below.
        assert_eq!(s.resolve(TEXT + 0x550), Some(sym("kfree", 0x150, None)));
        assert_eq!(s.resolve(TEXT + 0x810), Some(sym("_etext", 0x10, None)));
    }

    #[test]
    fn aliases_prefer_global_then_file_order() {
        let s = basic();
        // _stext and _text are both T: the first in the file wins over it and the local alias.
        assert_eq!(s.function(TEXT), "_stext");
        // local_helper (t) comes first, but global_alias (T) wins, and over weak_alias (W).
        assert_eq!(s.function(TEXT + 0x100), "global_alias");
        // Deterministic: the same text gives the same choice.
        assert_eq!(basic().function(TEXT + 0x100), "global_alias");
    }

    #[test]
    fn out_of_range_is_none() {
        let s = basic();
        assert_eq!(s.resolve(0), None);
        assert_eq!(s.resolve(TEXT - 1), None);
        assert_eq!(s.resolve(0x1000), None);
        assert_eq!(s.resolve(TEXT + 0x800 + MAX_OFFSET + 1), None);
        assert_eq!(
            s.resolve(TEXT + 0x800 + MAX_OFFSET),
            Some(sym("_etext", MAX_OFFSET, None))
        );
        assert_eq!(s.resolve(u64::MAX), None);
    }

    #[test]
    fn module_symbols_keep_their_module() {
        let s = basic();
        assert_eq!(s.resolve(FOO), Some(sym("foo_init", 0, Some("foo"))));
        assert_eq!(
            s.resolve(FOO + 0x90),
            Some(sym("foo_exit", 0x10, Some("foo")))
        );
        // foo_data (d) is skipped.
        assert_eq!(
            s.resolve(FOO + 0x104),
            Some(sym("foo_exit", 0x84, Some("foo")))
        );
        // Module lines out of address order are sorted.
        assert_eq!(
            s.resolve(BAR + 0x8),
            Some(sym("bar_probe", 0x8, Some("bar")))
        );
        assert_eq!(
            s.resolve(BAR + 0x40),
            Some(sym("bar_remove", 0, Some("bar")))
        );
        assert_eq!(
            s.function(0xffff_ffff_c0c0_0001),
            "bpf_prog_6deef7357e7b4530_sd_devices"
        );
    }

    #[test]
    fn with_offset_formats() {
        assert_eq!(sym("kfree", 0x1f, None).with_offset(), "kfree+0x1f");
        assert_eq!(sym("kfree", 0, None).with_offset(), "kfree+0x0");
        assert_eq!(
            sym("foo_init", 0x10, Some("foo")).with_offset(),
            "foo_init+0x10 [foo]"
        );
        let s = basic();
        let frame = s.resolve(FOO + 0x2a).expect("resolves").with_offset();
        assert_eq!(frame, "foo_init+0x2a [foo]");
    }

    #[test]
    fn function_never_shows_the_address() {
        let s = basic();
        let addrs = [
            0,
            1,
            TEXT - 1,
            TEXT + 0x41f,
            FOO + 0x2a,
            TEXT + 0x800 + MAX_OFFSET + 1,
            0xffff_ffff_8000_0000,
            u64::MAX,
        ];
        for addr in addrs {
            let f = s.function(addr);
            assert_eq!(f, s.function_str(addr));
            assert!(!f.contains(&format!("{addr:x}")), "{f}");
            assert!(!f.contains(&format!("{addr:X}")), "{f}");
            assert!(!f.contains("0x"), "{f}");
            if let Some(r) = s.resolve(addr) {
                assert!(!r.with_offset().contains(&format!("{addr:x}")));
            }
        }
        assert_eq!(s.function(0), UNKNOWN);
        assert_eq!(s.function(TEXT - 1), "unknown");
        assert_eq!(s.function(u64::MAX), "unknown");
        assert_eq!(s.function(TEXT + 0x41f), "kfree");
        let debug = format!("{s:?}");
        assert!(!debug.contains("ffffffff"), "{debug}");
    }

    #[test]
    fn all_zero_addresses_are_hidden() {
        let text = "0000000000000000 T _stext\n\
                    0000000000000000 t foo\n\
                    0000000000000000 D data\n\
                    0000000000000000 t foo_init\t[foo]\n";
        let err = Symbolizer::from_kallsyms(text, "/proc/kallsyms").unwrap_err();
        assert!(matches!(err, SymbolizeError::Hidden), "{err:?}");
        assert_eq!(
            err.to_string(),
            "kallsyms addresses are hidden (all zero): run as root or set kernel.kptr_restrict=0"
        );
        // An absolute symbol at zero among real addresses is not "hidden".
        let text = "0000000000000000 A fixed_percpu_data\nffffffff81000000 T _stext\n";
        assert_eq!(Symbolizer::from_kallsyms(text, "k").unwrap().len(), 1);
    }

    #[test]
    fn empty_text_is_an_empty_table() {
        let s = Symbolizer::from_kallsyms("", "k").unwrap();
        assert!(s.is_empty());
        assert_eq!(s.len(), 0);
        assert_eq!(s.resolve(TEXT), None);
        assert_eq!(s.function(TEXT), "unknown");
        let s = Symbolizer::from_kallsyms("\n\n", "k").unwrap();
        assert!(s.is_empty());
    }

    #[test]
    fn malformed_lines_name_path_and_line() {
        let cases = [
            ("ffffffff81000000 T _stext\nffffffff8100zz00 T kfree\n", 2),
            ("ffffffff81000000 T _stext\n\n+fffffff81000100 T kfree\n", 3),
            ("0x81000000 T _stext\n", 1),
            ("ffffffff810000000 T _stext\n", 1),
            ("ffffffff81000000\n", 1),
            ("ffffffff81000000 T\n", 1),
            ("ffffffff81000000 TT _stext\n", 1),
            ("ffffffff81000000 t foo_init\tfoo\n", 1),
            ("ffffffff81000000 t foo_init\t[]\n", 1),
            ("ffffffff81000000 t foo_init\t[foo] extra\n", 1),
        ];
        for (text, line) in cases {
            let err = Symbolizer::from_kallsyms(text, "/tmp/k").unwrap_err();
            match &err {
                SymbolizeError::Malformed { path, line: l, .. } => {
                    assert_eq!(path, "/tmp/k");
                    assert_eq!(*l, line, "{text:?}");
                }
                other => panic!("{text:?}: {other:?}"),
            }
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("malformed /tmp/k line {line}: ")),
                "{msg}"
            );
            assert!(!msg.contains('\n'), "{msg}");
            assert!(!msg.contains("8100"), "address echoed: {msg}");
        }
    }

    #[test]
    fn read_error_names_the_path() {
        let dir = TempDir::new("read-error");
        let missing = dir.path.join("missing");
        let err = Symbolizer::load_paths(&missing, &missing).unwrap_err();
        assert!(matches!(err, SymbolizeError::Read { .. }), "{err:?}");
        assert!(err.to_string().starts_with("cannot read /"), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
        // The cache keeps the reason as its status, in one line.
        let cached = Cached::with_paths(missing.clone(), missing, Duration::ZERO);
        assert!(cached.table().is_none());
        let status = cached.status().unwrap_err();
        assert!(
            status.starts_with("call sites cannot be symbolized (cannot read /"),
            "{status}"
        );
        assert!(!status.contains('\n'), "{status}");
    }

    #[test]
    fn modules_fingerprint_ignores_use_counts() {
        let a = b"foo 16384 0 - Live 0xffffffffc0a01000\nbar 8192 1 foo, Live 0x0000000000000000 (OE)\n";
        let b = b"foo 16384 3 - Live 0xffffffffc0a01000\nbar 8192 1 foo, Live 0x0000000000000000 (OE)\n";
        let c = b"foo 16384 0 - Live 0xffffffffc0a02000\nbar 8192 1 foo, Live 0x0000000000000000 (OE)\n";
        let d = b"bar 8192 1 foo, Live 0x0000000000000000 (OE)\n";
        assert_eq!(fingerprint_modules(a), fingerprint_modules(b));
        assert_ne!(fingerprint_modules(a), fingerprint_modules(c));
        assert_ne!(fingerprint_modules(a), fingerprint_modules(d));
        assert_ne!(fingerprint_modules(b""), 0);
        assert_ne!(fingerprint_modules(b"x"), fingerprint_modules(b"y"));
    }

    /// The table after a refresh (which must have one).
    fn get(c: &mut Cached) -> &Symbolizer {
        let _ = c.refresh();
        c.table().expect("a table is loaded")
    }

    /// A scratch directory removed on drop.
    struct TempDir {
        path: PathBuf,
    }

    impl TempDir {
        fn new(name: &str) -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = std::env::temp_dir().join(format!(
                "memtrace-symbolize-{}-{name}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            TempDir { path }
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }

    #[test]
    fn cached_reloads_only_when_modules_change() {
        let dir = TempDir::new("cached");
        let kallsyms = dir.path.join("kallsyms");
        let modules = dir.path.join("modules");
        let write = |p: &Path, s: &str| std::fs::write(p, s).unwrap();
        write(&kallsyms, "ffffffff81000000 T first\n");
        write(&modules, "foo 16384 0 - Live 0xffffffffc0a01000\n");

        let mut cached = Cached::with_paths(kallsyms.clone(), modules.clone(), Duration::ZERO);
        assert_eq!(cached.status(), Ok(()));
        assert_eq!(get(&mut cached).function(TEXT + 4), "first");

        // kallsyms changes, modules don't (a use count does): no reload.
        write(&kallsyms, "ffffffff81000000 T second\n");
        write(&modules, "foo 16384 2 - Live 0xffffffffc0a01000\n");
        assert_eq!(get(&mut cached).function(TEXT + 4), "first");
        assert_eq!(cached.reloads(), 0);

        // A module appears: reload.
        let two = "foo 16384 0 - Live 0xffffffffc0a01000\nbar 8192 0 - Live 0xffffffffc0b00000\n";
        write(&modules, two);
        let before = get(&mut cached).loaded_at();
        assert_eq!(get(&mut cached).function(TEXT + 4), "second");
        assert_eq!(cached.reloads(), 1);
        assert!(get(&mut cached).loaded_at() >= before);
        assert_eq!(cached.reloads(), 1, "no further reload while unchanged");

        // A failed reload keeps the old table and is not retried until the modules change.
        write(&kallsyms, "not-hex T third\n");
        write(&modules, "bar 8192 0 - Live 0xffffffffc0b00000\n");
        assert_eq!(get(&mut cached).function(TEXT + 4), "second");
        let status = cached.status().unwrap_err();
        assert!(
            status.starts_with(
                "kernel modules changed but the symbol table could not be reloaded (malformed "
            ),
            "{status}"
        );
        write(&kallsyms, "ffffffff81000000 T third\n");
        assert_eq!(get(&mut cached).function(TEXT + 4), "second");
        assert_eq!(cached.reloads(), 1);
        write(&modules, "");
        assert_eq!(get(&mut cached).function(TEXT + 4), "third");
        assert_eq!(cached.reloads(), 2);
        assert_eq!(
            cached.status(),
            Ok(()),
            "a successful reload clears the failure"
        );

        // The modules file disappearing is a change too.
        write(&kallsyms, "ffffffff81000000 T fourth\n");
        std::fs::remove_file(&modules).unwrap();
        assert_eq!(get(&mut cached).function(TEXT + 4), "fourth");
        assert_eq!(cached.reloads(), 3);
    }

    /// A table that could not be loaded at start is loaded when the modules change, and an
    /// empty kallsyms counts as a failure.
    #[test]
    fn cached_loads_late_and_refuses_an_empty_file() {
        let dir = TempDir::new("late");
        let kallsyms = dir.path.join("kallsyms");
        let modules = dir.path.join("modules");
        std::fs::write(&kallsyms, "").unwrap();
        std::fs::write(&modules, "foo 1 0 - Live 0x0\n").unwrap();
        let mut cached = Cached::with_paths(kallsyms.clone(), modules.clone(), Duration::ZERO);
        assert!(cached.table().is_none());
        let status = cached.refresh().unwrap_err();
        assert!(status.contains("holds no text symbol"), "{status}");
        // Fixed, but the modules did not change: not retried.
        std::fs::write(&kallsyms, "ffffffff81000000 T first\n").unwrap();
        assert!(cached.refresh().is_err());
        assert!(cached.table().is_none());
        std::fs::write(&modules, "").unwrap();
        assert_eq!(cached.refresh(), Ok(()));
        assert_eq!(get(&mut cached).function(TEXT), "first");
        assert_eq!(cached.reloads(), 1);
        // Hidden addresses are a failure too, with the reason.
        std::fs::write(&kallsyms, "0000000000000000 T first\n").unwrap();
        std::fs::write(&modules, "bar 1 0 - Live 0x0\n").unwrap();
        let status = cached.refresh().unwrap_err();
        assert!(status.contains("addresses are hidden"), "{status}");
        assert_eq!(
            get(&mut cached).function(TEXT),
            "first",
            "the old table stays"
        );
    }

    #[test]
    fn cached_checks_at_most_once_per_interval() {
        let dir = TempDir::new("interval");
        let kallsyms = dir.path.join("kallsyms");
        let modules = dir.path.join("modules");
        std::fs::write(&kallsyms, "ffffffff81000000 T first\n").unwrap();
        std::fs::write(&modules, "foo 1 0 - Live 0x0\n").unwrap();
        let mut cached =
            Cached::with_paths(kallsyms.clone(), modules.clone(), Duration::from_secs(3600));
        std::fs::write(&kallsyms, "ffffffff81000000 T second\n").unwrap();
        std::fs::write(&modules, "").unwrap();
        assert_eq!(get(&mut cached).function(TEXT), "first");
        assert_eq!(cached.reloads(), 0);
    }

    #[test]
    fn cached_without_a_modules_file() {
        let dir = TempDir::new("no-modules");
        let kallsyms = dir.path.join("kallsyms");
        std::fs::write(&kallsyms, BASIC).unwrap();
        let mut cached = Cached::with_paths(kallsyms, dir.path.join("absent"), Duration::ZERO);
        assert_eq!(get(&mut cached).function(TEXT + 0x400), "kfree");
        assert_eq!(get(&mut cached).len(), 11);
        assert_eq!(cached.reloads(), 0);
        let debug = format!("{cached:?}");
        assert!(!debug.contains("ffffffff"), "{debug}");
    }

    /// The running kernel's table. Skipped (with a note) where kallsyms is absent or hidden,
    /// i.e. when not run as root.
    #[test]
    fn live_kallsyms() {
        let text = match std::fs::read_to_string(KALLSYMS_PATH) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("skipping: cannot read {KALLSYMS_PATH}: {e}");
                return;
            }
        };
        let s = match Symbolizer::load() {
            Ok(s) => s,
            Err(SymbolizeError::Hidden) => {
                eprintln!("skipping: kallsyms addresses are hidden (not root)");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        assert!(s.len() > 1000, "{s:?}");

        // A well-known function whose address no other symbol shares.
        let addr_of = |name: &str| {
            text.lines().find_map(|l| {
                let mut f = l.split_ascii_whitespace();
                let (a, t, n) = (f.next()?, f.next()?, f.next()?);
                (n == name && t == "T" && f.next().is_none()).then(|| parse_hex(a))?
            })
        };
        let shared = |addr: u64| {
            let hex = format!("{addr:016x} ");
            text.lines().filter(|l| l.starts_with(&hex)).count() > 1
        };
        let (name, addr) = ["__kmalloc_noprof", "kfree", "kmem_cache_free", "vfree"]
            .into_iter()
            .find_map(|n| addr_of(n).filter(|&a| !shared(a)).map(|a| (n, a)))
            .expect("a well-known function in kallsyms");
        assert_eq!(s.resolve(addr + 0x10), Some(sym(name, 0x10, None)));
        assert_eq!(s.function(addr + 0x10), name);
        assert_eq!(s.resolve(addr).map(|x| x.offset), Some(0));

        let mut cached = Cached::new(Duration::ZERO);
        assert_eq!(cached.status(), Ok(()));
        assert_eq!(get(&mut cached).function(addr), name);
    }
}
