//! A minimal reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): just enough to find a
//! BTF tracepoint's argument list (`btf_trace_<event>`) and a struct's member offsets.
//!
//! aya's own `Btf` does not expose member offsets or prototype parameter names, and the
//! layouts memtrace needs must come from the running kernel, not from compile time.

use std::{collections::HashMap, path::Path};

use thiserror::Error;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Type {
    name: u32,
    kind: u32,
    kind_flag: bool,
    /// size for sized kinds, referenced type id otherwise
    size_or_type: u32,
    /// (name offset, type id, offset) of members / params; array: (elem type, _, nelems)
    items: Vec<(u32, u32, u32)>,
}

/// A parsed BTF blob.
pub struct Btf {
    types: Vec<Type>, // index = type id; 0 is void
    strings: Vec<u8>,
    by_name: HashMap<String, Vec<u32>>,
}

/// One parameter of a function prototype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub name: String,
    pub size: u32,
}

/// One member of a struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub byte_offset: u32,
    pub size: u32,
    /// Whether the member is a plain integer (or enum), not a struct, union, array or pointer.
    pub integer: bool,
}

fn u32_at(data: &[u8], off: usize) -> Result<u32, BtfError> {
    data.get(off..off + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub fn from_sys() -> Result<Self, BtfError> {
        Self::from_file(Path::new(VMLINUX))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|source| BtfError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&data)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed(
                "bad magic (only little-endian BTF is read)",
            ));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let types_start = hdr_len + type_off;
        let types_end = types_start + type_len;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed("string section out of range"))?
            .to_vec();
        let tdata = data
            .get(types_start..types_end)
            .ok_or(BtfError::Malformed("type section out of range"))?;

        let mut types = vec![Type {
            name: 0,
            kind: 0,
            kind_flag: false,
            size_or_type: 0,
            items: Vec::new(),
        }];
        let mut off = 0usize;
        while off < tdata.len() {
            let name = u32_at(tdata, off)?;
            let info = u32_at(tdata, off + 4)?;
            let size_or_type = u32_at(tdata, off + 8)?;
            off += 12;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let mut items = Vec::new();
            match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => off += 4,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => {}
                KIND_ARRAY => {
                    let elem = u32_at(tdata, off)?;
                    let nelems = u32_at(tdata, off + 8)?;
                    items.push((0, elem, nelems));
                    off += 12;
                }
                KIND_STRUCT | KIND_UNION => {
                    for _ in 0..vlen {
                        items.push((
                            u32_at(tdata, off)?,
                            u32_at(tdata, off + 4)?,
                            u32_at(tdata, off + 8)?,
                        ));
                        off += 12;
                    }
                }
                KIND_ENUM => {
                    for _ in 0..vlen {
                        items.push((u32_at(tdata, off)?, 0, u32_at(tdata, off + 4)?));
                        off += 8;
                    }
                }
                KIND_FUNC_PROTO => {
                    for _ in 0..vlen {
                        items.push((u32_at(tdata, off)?, u32_at(tdata, off + 4)?, 0));
                        off += 8;
                    }
                }
                KIND_ENUM64 => {
                    for _ in 0..vlen {
                        // (name, high 32 bits, low 32 bits)
                        items.push((
                            u32_at(tdata, off)?,
                            u32_at(tdata, off + 8)?,
                            u32_at(tdata, off + 4)?,
                        ));
                        off += 12;
                    }
                }
                KIND_DATASEC => off += 12 * vlen,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            }
            types.push(Type {
                name,
                kind,
                kind_flag,
                size_or_type,
                items,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            by_name: HashMap::new(),
        };
        for id in 1..btf.types.len() {
            let n = btf.types[id].name;
            if n != 0 {
                let name = btf.str_at(n).to_string();
                btf.by_name.entry(name).or_default().push(id as u32);
            }
        }
        Ok(btf)
    }

    fn str_at(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    fn find(&self, name: &str, kind: u32) -> Option<u32> {
        self.by_name
            .get(name)?
            .iter()
            .copied()
            .find(|&id| self.types[id as usize].kind == kind)
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            let t = &self.types[id as usize];
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return id,
            }
        }
        id
    }

    /// Size in bytes of type `id` (0 for void or unsized kinds).
    pub fn size_of(&self, id: u32) -> u32 {
        let id = self.resolve(id);
        let Some(t) = self.types.get(id as usize) else {
            return 0;
        };
        match t.kind {
            KIND_INT | KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64 | KIND_FLOAT => {
                t.size_or_type
            }
            KIND_PTR => 8,
            KIND_ARRAY => {
                let (_, elem, n) = t.items[0];
                self.size_of(elem).saturating_mul(n)
            }
            _ => 0,
        }
    }

    /// Whether this kernel's BTF knows the tracepoint `event` (`btf_trace_<event>`).
    pub fn has_tracepoint(&self, event: &str) -> bool {
        self.find(&format!("btf_trace_{event}"), KIND_TYPEDEF)
            .is_some()
    }

    /// The arguments a BTF tracepoint program gets for `event`, without the leading
    /// `void *__data`, or `None` if this kernel's BTF has no such tracepoint.
    ///
    /// Names come from the `__bpf_trace_<event>` function (the `btf_trace_<event>` typedef's
    /// prototype has unnamed parameters); without it, names are empty.
    pub fn tracepoint_args(&self, event: &str) -> Option<Vec<Param>> {
        let td = self.find(&format!("btf_trace_{event}"), KIND_TYPEDEF)?;
        let proto_id = match self.find(&format!("__bpf_trace_{event}"), KIND_FUNC) {
            Some(func) => self.types[func as usize].size_or_type,
            None => {
                let ptr = self
                    .types
                    .get(self.types[td as usize].size_or_type as usize)?;
                if ptr.kind != KIND_PTR {
                    return None;
                }
                ptr.size_or_type
            }
        };
        let params = self.proto_params(proto_id)?;
        Some(params.into_iter().skip(1).collect())
    }

    /// The parameters of the function prototype `proto_id`, or `None` if it is not one.
    fn proto_params(&self, proto_id: u32) -> Option<Vec<Param>> {
        let proto = self.types.get(proto_id as usize)?;
        if proto.kind != KIND_FUNC_PROTO {
            return None;
        }
        Some(
            proto
                .items
                .iter()
                .map(|&(name, ty, _)| Param {
                    name: self.str_at(name).to_string(),
                    size: self.size_of(ty),
                })
                .collect(),
        )
    }

    /// The parameters of the kernel function `name` (from its BTF prototype), or `None` if
    /// this kernel's BTF has no such function.
    pub fn function_params(&self, name: &str) -> Option<Vec<Param>> {
        let func = self.find(name, KIND_FUNC)?;
        self.proto_params(self.types[func as usize].size_or_type)
    }

    /// The size of `struct name`.
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        let id = self.find(name, KIND_STRUCT)?;
        Some(self.types[id as usize].size_or_type)
    }

    /// The member `member` of `struct name`, looking into its anonymous structs and unions
    /// (as C does), with its offset from the start of the outer struct.
    pub fn member_deep(&self, name: &str, member: &str) -> Option<Member> {
        let id = self.find(name, KIND_STRUCT)?;
        self.member_in(id, member, 0, 0)
    }

    fn member_in(&self, id: u32, member: &str, base_bits: u32, depth: u32) -> Option<Member> {
        let t = self.types.get(id as usize)?;
        if depth > 8 || !matches!(t.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for &(n, ty, off) in &t.items {
            let bits = base_bits + if t.kind_flag { off & 0x00ff_ffff } else { off };
            if n == 0 {
                if let Some(m) = self.member_in(self.resolve(ty), member, bits, depth + 1) {
                    return Some(m);
                }
            } else if self.str_at(n) == member {
                return Some(Member {
                    name: member.to_string(),
                    byte_offset: bits / 8,
                    size: self.size_of(ty),
                    integer: matches!(
                        self.types.get(self.resolve(ty) as usize).map(|t| t.kind),
                        Some(KIND_INT | KIND_ENUM | KIND_ENUM64)
                    ),
                });
            }
        }
        None
    }

    /// The enumerators of `enum name`, in declaration order, with their values.
    pub fn enum_values(&self, name: &str) -> Option<Vec<(String, i64)>> {
        let id = self
            .find(name, KIND_ENUM)
            .or_else(|| self.find(name, KIND_ENUM64))?;
        let t = &self.types[id as usize];
        Some(
            t.items
                .iter()
                .map(|&(n, hi, lo)| {
                    let v = if t.kind == KIND_ENUM {
                        i64::from(lo as i32)
                    } else {
                        ((u64::from(hi) << 32) | u64::from(lo)) as i64
                    };
                    (self.str_at(n).to_string(), v)
                })
                .collect(),
        )
    }

    /// The members of `struct name` (not descending into anonymous members).
    pub fn struct_members(&self, name: &str) -> Option<Vec<Member>> {
        let id = self.find(name, KIND_STRUCT)?;
        let t = &self.types[id as usize];
        Some(
            t.items
                .iter()
                .map(|&(n, ty, off)| {
                    let bit_off = if t.kind_flag { off & 0x00ff_ffff } else { off };
                    Member {
                        name: self.str_at(n).to_string(),
                        byte_offset: bit_off / 8,
                        size: self.size_of(ty),
                        integer: matches!(
                            self.types.get(self.resolve(ty) as usize).map(|t| t.kind),
                            Some(KIND_INT | KIND_ENUM | KIND_ENUM64)
                        ),
                    }
                })
                .collect(),
        )
    }
}

/// A BTF blob of `types` and `strings` behind the header (tests build BTF by hand).
#[cfg(test)]
pub(crate) fn with_header(types: &[u8], strings: &[u8]) -> Vec<u8> {
    let mut out = vec![0x9f, 0xeb, 1, 0];
    for w in [
        24u32,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.extend_from_slice(types);
    out.extend_from_slice(strings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a small BTF blob by hand: int, ptr, typedef btf_trace_x -> ptr -> proto.
    fn blob() -> Vec<u8> {
        let strings =
            b"\0int\0btf_trace_x\0__data\0size\0ptr\0s\0a\0b\0__bpf_trace_x\0mt\0M_A\0M_B\0"
                .to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut t = Vec::new();
        let mut push = |words: &[u32]| {
            for w in words {
                t.extend_from_slice(&w.to_le_bytes());
            }
        };
        // 1: int (8 bytes)
        push(&[s("int"), KIND_INT << 24, 8, 64]);
        // 2: void *
        push(&[0, KIND_PTR << 24, 0]);
        // 3: func proto (void *, int, void *), unnamed as in the kernel's typedefs
        push(&[0, (KIND_FUNC_PROTO << 24) | 3, 0]);
        push(&[0, 2, 0, 1, 0, 2]);
        // 4: ptr -> 3
        push(&[0, KIND_PTR << 24, 3]);
        // 5: typedef btf_trace_x -> 4
        push(&[s("btf_trace_x"), KIND_TYPEDEF << 24, 4]);
        // 6: struct s { int a; void *b; } (size 16)
        push(&[s("s"), (KIND_STRUCT << 24) | 2, 16]);
        push(&[s("a"), 1, 0, s("b"), 2, 64]);
        // 7: func proto (void *__data, int size, void *ptr)
        push(&[0, (KIND_FUNC_PROTO << 24) | 3, 0]);
        push(&[s("__data"), 2, s("size"), 1, s("ptr"), 2]);
        // 8: func __bpf_trace_x -> 7
        push(&[s("__bpf_trace_x"), KIND_FUNC << 24, 7]);
        // 9: enum mt { M_A = 0, M_B = -1 }
        push(&[s("mt"), (KIND_ENUM << 24) | 2, 4]);
        push(&[s("M_A"), 0, s("M_B"), u32::MAX]);
        with_header(&t, &strings)
    }

    #[test]
    fn reads_tracepoint_prototype_and_struct() {
        let btf = Btf::parse(&blob()).unwrap();
        let args = btf.tracepoint_args("x").unwrap();
        assert_eq!(
            args,
            vec![
                Param {
                    name: "size".into(),
                    size: 8
                },
                Param {
                    name: "ptr".into(),
                    size: 8
                }
            ]
        );
        assert!(btf.tracepoint_args("y").is_none());
        assert!(btf.has_tracepoint("x"));
        assert!(!btf.has_tracepoint("y"));
        let m = btf.struct_members("s").unwrap();
        assert_eq!(m[1].name, "b");
        assert_eq!(m[1].byte_offset, 8);
        assert!(m[0].integer && !m[1].integer, "int a; void *b");
        assert_eq!(
            btf.enum_values("mt").unwrap(),
            vec![("M_A".to_string(), 0), ("M_B".to_string(), -1)]
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, really not").is_err());
        let mut b = blob();
        b.truncate(30);
        assert!(Btf::parse(&b).is_err());
    }
}
