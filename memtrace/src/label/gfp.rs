//! GFP flags decoded with the running kernel's own table.
//!
//! The `print fmt:` line of a tracefs event that records `gfp_flags` (kmalloc, mm_page_alloc,
//! percpu_alloc_percpu, ...) holds `__print_flags(REC->gfp_flags, "|", {( unsigned
//! long)(EXPR), "NAME"}, ..., { 0, ((void *)0) } )`: every composite and single-bit name, its
//! value spelled as a C constant expression. [`GfpTable`] evaluates those expressions with C's
//! integer types (so `~(gfp_t)x` stays 32 bits wide) and decodes raw values as ftrace does.

use thiserror::Error;

use super::{OTHER, UNKNOWN};

/// Why a print fmt could not be turned into a [`GfpTable`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum GfpError {
    #[error("no __print_flags table for gfp_flags in the print fmt")]
    NoTable,
    #[error("malformed gfp_flags table at byte {offset} of the print fmt: {message}")]
    Syntax { offset: usize, message: String },
    #[error("the gfp_flags __print_flags table has no entries")]
    Empty,
}

/// The kernel's GFP name table in the kernel's order: composites (`GFP_*`) first, then the
/// single bits and modifiers (`__GFP_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GfpTable {
    entries: Vec<(String, u64)>,
    delim: String,
}

impl GfpTable {
    /// Parses the `__print_flags` table for `gfp_flags` out of a format file's print fmt text
    /// (the whole format file text is also accepted: then its `print fmt:` line is used).
    pub fn from_print_fmt(text: &str) -> Result<GfpTable, GfpError> {
        const FMT: &str = "print fmt:";
        const CALL: &str = "__print_flags(";
        let fmt = match text.find(FMT) {
            Some(i) => text[i + FMT.len()..].lines().next().unwrap_or(""),
            None => text,
        };
        // The first argument (the flags field) runs up to the first comma.
        let first_arg = |i: usize| fmt[i..].find(',').map(|n| (i + n, &fmt[i..i + n]));
        let (comma, _) = fmt
            .match_indices(CALL)
            .filter_map(|(i, _)| first_arg(i + CALL.len()))
            .find(|(_, arg)| arg.contains("gfp_flags"))
            .ok_or(GfpError::NoTable)?;
        let mut p = Parser::new(fmt.as_bytes(), comma + 1);
        let delim = p.string()?;
        let mut entries = Vec::new();
        while !p.eat(")") {
            p.expect(",")?;
            p.expect("{")?;
            let mask = p.expr(0)?.cast(64, false).v;
            p.expect(",")?;
            if p.peek() != Some(b'"') {
                // A NULL name, as in the terminator `{ 0, ((void *)0) }`, ends the table.
                p.expr(0)?;
                p.expect("}")?;
                p.expect(")")?;
                break;
            }
            entries.push((p.string()?, mask));
            p.expect("}")?;
        }
        match entries.is_empty() {
            true => Err(GfpError::Empty),
            false => Ok(GfpTable { entries, delim }),
        }
    }

    /// Composite names in kernel order: entries whose name starts with `GFP_`.
    pub fn composites(&self) -> impl Iterator<Item = (&str, u64)> {
        self.iter().filter(|(n, _)| n.starts_with("GFP_"))
    }

    /// The single-bit and modifier flags: entries whose name starts with `__GFP_`.
    pub fn flags(&self) -> impl Iterator<Item = (&str, u64)> {
        self.iter().filter(|(n, _)| n.starts_with("__GFP_"))
    }

    /// The running kernel's table, from the `kmem:kmalloc` format file (tracefs is mounted if
    /// it is absent).
    pub fn from_kernel() -> anyhow::Result<GfpTable> {
        let (dir, _) = crate::kernel::tracefs::ensure_mounted()?;
        let fmt = crate::kernel::tracefs::Format::read(&dir, "kmem", "kmalloc")?;
        Ok(GfpTable::from_print_fmt(&fmt.print_fmt)?)
    }

    /// The `gfp` metric label of a raw value: the first composite (kernel order) whose mask is
    /// non-zero and wholly contained in `value`, else `"other"` (so also for 0).
    pub fn label(&self, value: u64) -> &str {
        self.composites()
            .find(|&(_, m)| m != 0 && value & m == m)
            .map_or(OTHER, |(n, _)| n)
    }

    /// The `gfp` label of a raw value as memtrace's maps hold it: the overflow slot is
    /// `other`, a tracepoint without flags is `unknown`, anything else [`GfpTable::label`]
    /// (or `other` without a table).
    pub fn label_of(table: Option<&GfpTable>, raw: u64) -> String {
        match raw {
            memtrace_common::GFP_OVERFLOW => OTHER.into(),
            memtrace_common::GFP_UNKNOWN => UNKNOWN.into(),
            _ => table.map_or(OTHER, |t| t.label(raw)).to_string(),
        }
    }

    /// `value` exactly as ftrace's `__print_flags` prints it: in table order, the name of each
    /// non-zero mask wholly contained in what is left, clearing its bits; then leftover bits in
    /// hex; all joined with the table's delimiter (`|`). 0 is `"none"`.
    pub fn decode(&self, value: u64) -> String {
        if value == 0 {
            return "none".to_string();
        }
        let mut rest = value;
        let mut parts: Vec<String> = Vec::new();
        for (name, mask) in self.iter() {
            if mask != 0 && rest & mask == mask {
                parts.push(name.to_string());
                rest &= !mask;
            }
        }
        if rest != 0 {
            parts.push(format!("{rest:#x}"));
        }
        parts.join(&self.delim)
    }

    fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries.iter().map(|(n, m)| (n.as_str(), *m))
    }
}

/// A C integer value: `v` is truncated to `bits` (8..=64); `signed` is its signedness.
#[derive(Debug, Clone, Copy)]
struct Val {
    v: u64,
    bits: u32,
    signed: bool,
}

fn width_mask(bits: u32) -> u64 {
    u64::MAX >> (64 - bits)
}

impl Val {
    fn new(v: u64, bits: u32, signed: bool) -> Val {
        Val {
            v: v & width_mask(bits),
            bits,
            signed,
        }
    }
    /// The value sign- or zero-extended to 64 bits.
    fn wide(self) -> u64 {
        let s = 64 - self.bits;
        let extended = (((self.v << s) as i64) >> s) as u64;
        if self.signed { extended } else { self.v }
    }
    fn cast(self, bits: u32, signed: bool) -> Val {
        Val::new(self.wide(), bits, signed)
    }
    /// C's integer promotion: anything narrower than `int` becomes `int`.
    fn promote(self) -> Val {
        self.cast(self.bits.max(32), self.signed || self.bits < 32)
    }
}

/// Applies a binary operator with C's conversions; `None` for an out-of-range shift.
fn binary(op: &str, a: Val, b: Val) -> Option<Val> {
    let (a, b) = (a.promote(), b.promote());
    if op == "<<" || op == ">>" {
        let n = b.wide() as i64;
        if !(0..i64::from(a.bits)).contains(&n) {
            return None;
        }
        let v = match (op, a.signed) {
            ("<<", _) => a.v << n,
            (_, true) => ((a.wide() as i64) >> n) as u64,
            _ => a.v >> n,
        };
        return Some(Val::new(v, a.bits, a.signed));
    }
    // The wider type wins; of equal widths, unsigned wins.
    let w = if a.bits > b.bits { a } else { b };
    let signed = w.signed && (a.bits != b.bits || a.signed && b.signed);
    let (x, y) = (a.cast(w.bits, signed).v, b.cast(w.bits, signed).v);
    let v = match op {
        "|" => x | y,
        "^" => x ^ y,
        "&" => x & y,
        "+" => x.wrapping_add(y),
        "-" => x.wrapping_sub(y),
        _ => x.wrapping_mul(y),
    };
    Some(Val::new(v, w.bits, signed))
}

/// The integer type `(bits, signed)` a cast's words name (LP64), if known.
fn c_type(words: &[&str], pointer: bool) -> Option<(u32, bool)> {
    let mut t = (32, true);
    for w in words {
        let name = w.trim_start_matches("__");
        t = match name {
            "unsigned" => (t.0, false),
            "signed" | "int" | "void" => t,
            "char" => (8, t.1),
            "short" => (16, t.1),
            "long" => (64, t.1),
            "u8" | "s8" | "u16" | "s16" | "u32" | "s32" | "u64" | "s64" => {
                (name[1..].parse().ok()?, name.starts_with('s'))
            }
            "gfp_t" => (32, false),
            "size_t" | "uintptr_t" => (64, false),
            _ => return None,
        };
    }
    Some(if pointer { (64, false) } else { t })
}

/// Recursive-descent parser and evaluator over the print fmt's bytes.
struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    depth: u32,
}

impl Parser<'_> {
    fn new(s: &[u8], pos: usize) -> Parser<'_> {
        Parser { s, pos, depth: 0 }
    }
    fn err(&self, message: impl Into<String>) -> GfpError {
        GfpError::Syntax {
            offset: self.pos,
            message: message.into(),
        }
    }
    fn rest(&self) -> &[u8] {
        self.s.get(self.pos..).unwrap_or_default()
    }
    /// Skips white space; the next byte.
    fn peek(&mut self) -> Option<u8> {
        self.pos += self.run(u8::is_ascii_whitespace);
        self.rest().first().copied()
    }
    fn eat(&mut self, tok: &str) -> bool {
        self.peek();
        let hit = self.rest().starts_with(tok.as_bytes());
        self.pos += if hit { tok.len() } else { 0 };
        hit
    }
    fn expect(&mut self, tok: &str) -> Result<(), GfpError> {
        if self.eat(tok) {
            return Ok(());
        }
        let found = String::from_utf8_lossy(&self.rest()[..self.rest().len().min(16)]);
        Err(match found.is_empty() {
            true => self.err(format!("expected `{tok}`, found end of input")),
            false => self.err(format!("expected `{tok}`, found `{found}`")),
        })
    }
    /// Length of the run of bytes at the cursor that satisfy `f`.
    fn run(&self, f: impl Fn(&u8) -> bool) -> usize {
        self.rest().iter().take_while(|c| f(c)).count()
    }
    /// A C string literal (a backslash escapes the next byte).
    fn string(&mut self) -> Result<String, GfpError> {
        self.expect("\"")?;
        let mut out = Vec::new();
        while let Some(&c) = self.rest().first() {
            self.pos += 1;
            match (c, self.rest().first()) {
                (b'"', _) => return Ok(String::from_utf8_lossy(&out).into_owned()),
                (b'\\', Some(&e)) => {
                    out.push(e);
                    self.pos += 1;
                }
                _ => out.push(c),
            }
        }
        Err(self.err("unterminated string literal"))
    }
    /// Precedence climbing over binary operators binding at least as tightly as `min`.
    fn expr(&mut self, min: u8) -> Result<Val, GfpError> {
        const OPS: [(&str, u8); 8] = [
            ("<<", 4),
            (">>", 4),
            ("|", 1),
            ("^", 2),
            ("&", 3),
            ("+", 5),
            ("-", 5),
            ("*", 6),
        ];
        let mut lhs = self.unary()?;
        loop {
            self.peek();
            let r = self.rest();
            let logical = r.starts_with(b"||") || r.starts_with(b"&&");
            let Some((op, prec)) = OPS.into_iter().find(|(op, _)| r.starts_with(op.as_bytes()))
            else {
                return Ok(lhs);
            };
            if logical || prec < min {
                return Ok(lhs);
            }
            self.pos += op.len();
            let rhs = self.expr(prec + 1)?;
            lhs = binary(op, lhs, rhs).ok_or_else(|| self.err("shift count out of range"))?;
        }
    }
    fn unary(&mut self) -> Result<Val, GfpError> {
        self.depth += 1;
        let r = match self.depth {
            0..=200 => self.unary_inner(),
            _ => Err(self.err("expression nested too deeply")),
        };
        self.depth -= 1;
        r
    }
    fn unary_inner(&mut self) -> Result<Val, GfpError> {
        let c = self
            .peek()
            .ok_or_else(|| self.err("unexpected end of input in expression"))?;
        if c.is_ascii_digit() {
            return self.number();
        }
        self.pos += 1;
        let a = match c {
            b'~' | b'-' | b'+' => self.unary()?.promote(),
            b'(' => match self.cast_type()? {
                Some((bits, signed)) => return Ok(self.unary()?.cast(bits, signed)),
                None => return self.expr(0).and_then(|v| self.expect(")").map(|_| v)),
            },
            _ => {
                self.pos -= 1;
                return Err(self.err(format!("unexpected `{}` in expression", char::from(c))));
            }
        };
        let v = match c {
            b'~' => !a.v,
            b'-' => a.v.wrapping_neg(),
            _ => a.v,
        };
        Ok(Val::new(v, a.bits, a.signed))
    }
    /// After `(`: a cast's type name and its `)`, or `None` (nothing consumed) if no cast.
    fn cast_type(&mut self) -> Result<Option<(u32, bool)>, GfpError> {
        let Some(b'a'..=b'z' | b'A'..=b'Z' | b'_') = self.peek() else {
            return Ok(None);
        };
        let len =
            self.run(|c| c.is_ascii_alphanumeric() || c.is_ascii_whitespace() || b"_*".contains(c));
        let name = String::from_utf8_lossy(&self.rest()[..len]).into_owned();
        let words: Vec<&str> = name
            .split(|c: char| c.is_whitespace() || c == '*')
            .filter(|w| !w.is_empty())
            .collect();
        let ty = c_type(&words, name.contains('*'));
        let ty = ty.ok_or_else(|| self.err(format!("unknown type `{}` in cast", name.trim())))?;
        self.pos += len;
        self.expect(")")?;
        Ok(Some(ty))
    }
    /// An integer literal (decimal, octal or hex, `u`/`l` suffixes), typed as C types it.
    fn number(&mut self) -> Result<Val, GfpError> {
        let len = self.run(u8::is_ascii_alphanumeric);
        let tok = String::from_utf8_lossy(&self.rest()[..len]).into_owned();
        let digits = tok.trim_end_matches(['u', 'U', 'l', 'L']);
        let suffix = tok[digits.len()..].to_ascii_lowercase();
        let (u, l) = (suffix.contains('u'), suffix.contains('l'));
        let (radix, digits) = match digits.strip_prefix("0x").or(digits.strip_prefix("0X")) {
            Some(hex) => (16, hex),
            None if digits.len() > 1 && digits.starts_with('0') => (8, &digits[1..]),
            None => (10, digits),
        };
        let valid = ["", "u", "l", "ul", "lu", "ll", "ull", "llu"].contains(&&*suffix);
        let v = u64::from_str_radix(digits, radix).ok().filter(|_| valid);
        // C's type for it: the first of int, unsigned int, long, unsigned long that suits the
        // suffix and holds the value (decimal literals without `u` skip the unsigned types).
        let typed = v.and_then(|v| {
            [(32, true), (32, false), (64, true), (64, false)]
                .into_iter()
                .filter(|&(b, s)| (!u || !s) && (!l || b == 64) && (s || u || radix != 10))
                .find(|&(b, s)| v <= width_mask(b) >> u32::from(s))
                .map(|(b, s)| Val::new(v, b, s))
        });
        self.pos += if typed.is_some() { len } else { 0 };
        typed.ok_or_else(|| self.err(format!("invalid integer literal `{tok}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KMALLOC: &str = include_str!("../../testdata/linux-6.18/kmem_kmalloc.format");
    const PAGE: &str = include_str!("../../testdata/linux-6.18/kmem_mm_page_alloc.format");
    const PERCPU: &str =
        include_str!("../../testdata/linux-6.18/percpu_percpu_alloc_percpu.format");

    fn table() -> GfpTable {
        GfpTable::from_print_fmt(KMALLOC).unwrap()
    }
    fn mask(t: &GfpTable, name: &str) -> u64 {
        t.iter().find(|&(n, _)| n == name).unwrap().1
    }
    /// `"NAME=value NAME=value ..."` (values in hex) as pairs.
    fn pairs(s: &str) -> Vec<(&str, u64)> {
        s.split_whitespace()
            .map(|p| p.split_once('=').unwrap())
            .map(|(n, v)| (n, u64::from_str_radix(v, 16).unwrap()))
            .collect()
    }
    fn fmt_line() -> &'static str {
        KMALLOC
            .lines()
            .find(|l| l.starts_with("print fmt:"))
            .unwrap()
    }
    fn eval(expr: &str) -> Result<u64, GfpError> {
        let mut p = Parser::new(expr.as_bytes(), 0);
        let v = p.expr(0)?.cast(64, false).v;
        p.peek().map_or(Ok(v), |_| Err(p.err("trailing input")))
    }

    #[test]
    fn kernel_values() {
        let t = table();
        let bits = "__GFP_DMA=1 __GFP_HIGHMEM=2 __GFP_MOVABLE=8 __GFP_HIGH=20 __GFP_IO=40 \
            __GFP_FS=80 __GFP_ZERO=100 __GFP_DIRECT_RECLAIM=400 __GFP_KSWAPD_RECLAIM=800 \
            __GFP_NOWARN=2000 __GFP_COMP=40000 __GFP_HARDWALL=100000 __GFP_ACCOUNT=400000 \
            __GFP_NO_OBJ_EXT=1000000";
        for (name, m) in pairs(bits) {
            assert_eq!(mask(&t, name), m, "{name}");
        }
        let composites = "GFP_TRANSHUGE=1c24ca GFP_TRANSHUGE_LIGHT=1c20ca \
            GFP_HIGHUSER_MOVABLE=100cca GFP_HIGHUSER=100cc2 GFP_USER=100cc0 \
            GFP_KERNEL_ACCOUNT=400cc0 GFP_KERNEL=cc0 GFP_NOFS=c40 GFP_ATOMIC=820 GFP_NOIO=c00 \
            GFP_NOWAIT=2800 GFP_DMA=1 GFP_DMA32=4";
        assert_eq!(t.composites().collect::<Vec<_>>(), pairs(composites));
        assert_eq!(t.flags().next(), Some(("__GFP_RECLAIM", 0xc00)));
        assert_eq!(t.flags().count(), 25);
    }

    #[test]
    fn labels() {
        let t = table();
        for name in "GFP_KERNEL GFP_KERNEL_ACCOUNT GFP_ATOMIC GFP_NOWAIT GFP_USER \
            GFP_HIGHUSER_MOVABLE GFP_TRANSHUGE GFP_TRANSHUGE_LIGHT GFP_DMA"
            .split_whitespace()
        {
            assert_eq!(t.label(mask(&t, name)), name);
        }
        let zero = mask(&t, "__GFP_ZERO");
        assert_eq!(t.label(0xcc0 | zero), "GFP_KERNEL");
        assert_eq!(t.label(0), "other");
        assert_eq!(t.label(1), "GFP_DMA");
        assert_eq!(t.label(zero), "other");
        assert_eq!(t.label(1 << 30), "other");
    }

    #[test]
    fn decoding_matches_ftrace() {
        let t = table();
        let m = |n| mask(&t, n);
        let nowait = m("GFP_NOWAIT") | m("__GFP_IO") | m("__GFP_FS") | m("__GFP_HARDWALL");
        let expected = "GFP_NOWAIT|__GFP_IO|__GFP_FS|__GFP_HARDWALL";
        assert_eq!(t.decode(nowait), expected);
        let nofs = m("GFP_NOFS") | m("__GFP_ZERO");
        assert_eq!(t.decode(nofs), "GFP_NOFS|__GFP_ZERO");
        assert_eq!(t.decode(m("GFP_USER")), "GFP_USER");
        assert_eq!(t.decode(0xcc0 | 1 << 30), "GFP_KERNEL|0x40000000");
        assert_eq!(t.decode(1 << 30), "0x40000000");
        assert_eq!(t.decode(0), "none");
    }

    #[test]
    fn same_table_in_every_event() {
        let t = table();
        assert_eq!(GfpTable::from_print_fmt(PAGE), Ok(t.clone()));
        assert_eq!(GfpTable::from_print_fmt(PERCPU), Ok(t.clone()));
        assert_eq!(GfpTable::from_print_fmt(&fmt_line()[10..]), Ok(t));
    }

    #[test]
    fn c_expressions() {
        assert_eq!(eval("~(( gfp_t)0)"), Ok(0xffff_ffff));
        assert_eq!(eval("~0UL"), Ok(u64::MAX));
        assert_eq!(eval("(unsigned long)-1"), Ok(u64::MAX));
        assert_eq!(eval("(unsigned long)(unsigned int)-1"), Ok(0xffff_ffff));
        assert_eq!(eval("(unsigned long)-1 >> 60"), Ok(0xf));
        assert_eq!(eval("(long)-16 >> 2"), Ok(-4i64 as u64));
        assert_eq!(eval("0x10 >> 2 + 1"), Ok(2));
        assert_eq!(eval("1 | 2 & 3 ^ 4"), Ok(7));
        assert_eq!(eval("010 + 0X1fULL - 1 * 2"), Ok(37));
        assert_eq!(eval("(__u8)0x1ff + (s16)-1"), Ok(254));
        assert_eq!(eval("0xffffffff + 1"), Ok(0));
        for bad in "1UL << 64; 1 << -1; 1 && 2; 0x; 1uu; 08; (__)0; (REC)1; (1; 1 +".split("; ") {
            assert!(eval(bad).is_err(), "{bad}");
        }
        assert!(eval(&"(".repeat(100_000)).is_err());
        assert!(eval(&"~".repeat(100_000)).is_err());
    }

    #[test]
    fn malformed_input() {
        assert_eq!(
            GfpTable::from_print_fmt("print fmt: \"%d\", REC->x"),
            Err(GfpError::NoTable)
        );
        assert_eq!(GfpTable::from_print_fmt(""), Err(GfpError::NoTable));
        let e = GfpTable::from_print_fmt(&KMALLOC.replacen("<< (10)", "<< (1O)", 1)).unwrap_err();
        assert!(
            e.to_string().contains("invalid integer literal `1O`"),
            "{e}"
        );
        let e = GfpTable::from_print_fmt(&KMALLOC.replacen("gfp_t", "REC", 1)).unwrap_err();
        assert!(e.to_string().contains("unknown type `REC` in cast"), "{e}");
        let e = GfpTable::from_print_fmt("__print_flags(REC->gfp_flags, \"|\", {1 <<, \"X\"})");
        assert!(e.unwrap_err().to_string().contains("unexpected `,`"));
        let e = GfpTable::from_print_fmt("__print_flags(REC->gfp_flags, \"|\", {0, (void *)0})");
        assert_eq!(e, Err(GfpError::Empty));
    }

    #[test]
    fn truncated_prefixes_never_panic() {
        let line = fmt_line();
        let end = line.find("{ 0, ((void *)0) } )").unwrap() + 20;
        for (i, _) in line.char_indices() {
            let ok = GfpTable::from_print_fmt(&line[..i]).is_ok();
            assert_eq!(ok, i >= end, "prefix {i}");
        }
    }
}
