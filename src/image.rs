//! The input image: one x86-64 ELF executable, memory-mapped read-only, with its sections,
//! symbols and (when `ld --emit-relocs` kept them) relocations.
//!
//! Everything here borrows from the map for the `'data` lifetime; nothing is copied except the
//! small per-section and per-symbol records. The image is validated while it is read: every
//! header, section and symbol reference that later phases use is bounds-checked here, so those
//! phases can index without re-checking. A malformed file is an [`InputError`] naming the file
//! and what is wrong.

use std::fmt;
use std::path::Path;

use object::elf::{self, FileHeader64, Rela64, SectionHeader64, Sym64};
use object::read::elf::{FileHeader, Rela, SectionHeader, Sym};
use object::{Endianness, FileKind};
use rayon::prelude::*;

pub type Endian = Endianness;

/// Why an input could not be checked. Rendered as `stackval: <file>: <what>`.
#[derive(Debug)]
pub struct InputError {
    pub file: String,
    pub what: String,
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.what)
    }
}

impl std::error::Error for InputError {}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SymKind {
    Func,
    Object,
    NoType,
}

/// One allocated section.
#[derive(Clone, Debug)]
pub struct Section<'data> {
    pub index: usize,
    pub name: &'data str,
    pub addr: u64,
    pub size: u64,
    pub exec: bool,
    /// File bytes; empty for NOBITS sections.
    pub data: &'data [u8],
}

impl Section<'_> {
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.addr && addr - self.addr < self.size
    }
}

/// One symbol of an allocated section, with its address resolved.
#[derive(Clone, Copy, Debug)]
pub struct Symbol<'data> {
    pub name: &'data str,
    pub addr: u64,
    pub size: u64,
    pub kind: SymKind,
    pub global: bool,
    /// Index into [`Image::sections`].
    pub section: u32,
}

/// Relocations that apply to one section, in the order the linker emitted them.
#[derive(Clone, Copy)]
pub struct RelaSection<'data> {
    pub target: usize,
    pub relas: &'data [Rela64<Endian>],
    pub symtab_index: usize,
}

pub struct Image<'data> {
    pub file: String,
    pub data: &'data [u8],
    pub endian: Endian,
    /// Allocated sections, in section-header order (index is *not* the ELF index).
    pub sections: Vec<Section<'data>>,
    /// ELF section index -> position in `sections`.
    elf_to_sec: Vec<Option<u32>>,
    /// Symbols of allocated sections, sorted by address (then by size, largest first).
    pub symbols: Vec<Symbol<'data>>,
    /// The symbols [`Image::symbol`] is asked for ([`is_looked_up`]) among them, in the same
    /// order: a search of these few spares a pass over all symbols for each name (the kernel's
    /// tables alone take two to four names each, and a missing name costs a whole pass).
    looked_up: Vec<Symbol<'data>>,
    relas: Vec<RelaSection<'data>>,
    raw_symbols: &'data [Sym64<Endian>],
}

impl<'data> Image<'data> {
    /// Parses and validates `data`, the contents of `path`.
    pub fn parse(path: &Path, data: &'data [u8]) -> Result<Self, InputError> {
        let file = path.display().to_string();
        let err = |what: String| InputError {
            file: file.clone(),
            what,
        };
        match FileKind::parse(data) {
            Ok(FileKind::Elf64) => {}
            Ok(FileKind::Elf32) => {
                return Err(err(
                    "32-bit ELF file; stackval checks x86-64 kernel images".into()
                ))
            }
            Ok(kind) => {
                return Err(err(format!(
                    "not an ELF file (looks like {kind:?}); stackval checks x86-64 vmlinux images"
                )))
            }
            Err(_) if data.len() < 64 => {
                return Err(err(format!(
                    "file too short to be an ELF image ({} bytes)",
                    data.len()
                )))
            }
            Err(_) => return Err(err("not an ELF file (bad magic)".into())),
        }
        let header_size = std::mem::size_of::<FileHeader64<Endian>>();
        if data.len() < header_size {
            return Err(err(format!(
                "truncated ELF header ({} bytes; an ELF64 header is {header_size})",
                data.len()
            )));
        }
        let header =
            FileHeader64::<Endian>::parse(data).map_err(|e| err(format!("bad ELF header: {e}")))?;
        let endian = header
            .endian()
            .map_err(|e| err(format!("bad ELF header: {e}")))?;
        if endian != Endianness::Little {
            return Err(err("big-endian ELF; x86-64 images are little-endian".into()));
        }
        let machine = header.e_machine(endian);
        if machine != elf::EM_X86_64 {
            return Err(err(format!(
                "ELF machine {} ({}), not x86-64",
                machine,
                machine_name(machine)
            )));
        }
        match header.e_type(endian) {
            elf::ET_EXEC => {}
            elf::ET_REL => {
                return Err(err(
                    "relocatable object (ET_REL); stackval checks linked images (vmlinux), not object files"
                        .into(),
                ))
            }
            elf::ET_DYN => {
                return Err(err(
                    "shared object or PIE (ET_DYN); stackval checks linked kernel images (ET_EXEC)"
                        .into(),
                ))
            }
            t => return Err(err(format!("unsupported ELF type {t}; expected ET_EXEC"))),
        }
        let table = header.sections(endian, data).map_err(|e| {
            let (shoff, shnum) = (header.e_shoff(endian), header.e_shnum(endian));
            let size = u64::from(shnum) * u64::from(header.e_shentsize(endian));
            match shoff.checked_add(size) {
                Some(end) if end <= data.len() as u64 => {
                    err(format!("bad section header table: {e}"))
                }
                _ => err(format!(
                    "section header table (offset {shoff:#x}, {shnum} entries) lies outside the file ({} bytes); truncated?",
                    data.len()
                )),
            }
        })?;
        if table.is_empty() {
            return Err(err("no section headers".into()));
        }

        let mut sections = Vec::new();
        let mut elf_to_sec = vec![None; table.len()];
        let mut relas = Vec::new();
        let mut symtab = None;
        for (i, sh) in table.iter().enumerate() {
            let name = table
                .section_name(endian, sh)
                .ok()
                .and_then(|n| std::str::from_utf8(n).ok())
                .ok_or_else(|| err(format!("section {i}: bad name")))?;
            let sh_type = sh.sh_type(endian);
            let flags = sh.sh_flags(endian);
            match sh_type {
                elf::SHT_SYMTAB => symtab = Some(i),
                elf::SHT_RELA => {
                    let target = sh.sh_info(endian) as usize;
                    let relas_data = sh.data_as_array::<Rela64<Endian>, _>(endian, data).map_err(|_| {
                        err(format!(
                            "section {name}: offset {:#x} size {:#x} lies outside the file ({} bytes)",
                            sh.sh_offset(endian),
                            sh.sh_size(endian),
                            data.len()
                        ))
                    })?;
                    if target == 0 || target >= table.len() {
                        return Err(err(format!(
                            "section {name}: relocates section {target}, which does not exist"
                        )));
                    }
                    relas.push(RelaSection {
                        target,
                        relas: relas_data,
                        symtab_index: sh.sh_link(endian) as usize,
                    });
                }
                _ => {}
            }
            if flags & u64::from(elf::SHF_ALLOC) == 0 || sh_type == elf::SHT_NULL {
                continue;
            }
            let bytes: &[u8] = if sh_type == elf::SHT_NOBITS {
                &[]
            } else {
                sh.data(endian, data).map_err(|_| {
                    err(format!(
                        "section {name}: offset {:#x} size {:#x} lies outside the file ({} bytes); truncated?",
                        sh.sh_offset(endian),
                        sh.sh_size(endian),
                        data.len()
                    ))
                })?
            };
            let addr = sh.sh_addr(endian);
            if addr.checked_add(sh.sh_size(endian)).is_none() {
                return Err(err(format!(
                    "section {name}: address {addr:#x} size {:#x} runs past the end of the address space",
                    sh.sh_size(endian)
                )));
            }
            let exec = flags & u64::from(elf::SHF_EXECINSTR) != 0;
            let end = addr + sh.sh_size(endian);
            if exec
                && !bytes.is_empty()
                && !(crate::decode::fits_addr(addr)
                    && crate::decode::fits_addr(end - 1)
                    && end - addr < 1 << 31)
            {
                // Instructions keep their addresses in 32 bits, sign-extended (see
                // `decode::Insn`): an x86-64 kernel is linked in the top 2 GiB.
                return Err(err(format!(
                    "section {name}: code at {addr:#x}..{end:#x} lies outside the x86-64 kernel's address range (the top 2 GiB of the address space, or the lowest 2 GiB)"
                )));
            }
            elf_to_sec[i] = Some(sections.len() as u32);
            sections.push(Section {
                index: i,
                name,
                addr,
                size: sh.sh_size(endian),
                exec,
                data: bytes,
            });
        }
        if !sections.iter().any(|s| s.exec && !s.data.is_empty()) {
            return Err(err("no executable sections".into()));
        }
        let symtab = symtab.ok_or_else(|| {
            err("no symbol table (.symtab); was the image stripped? stackval needs function symbols".into())
        })?;
        let symtab_hdr: &SectionHeader64<Endian> = table
            .section(object::SectionIndex(symtab))
            .map_err(|e| err(e.to_string()))?;
        let raw_symbols = symtab_hdr
            .data_as_array::<Sym64<Endian>, _>(endian, data)
            .map_err(|_| err(".symtab: lies outside the file; truncated?".into()))?;
        let strtab_index = symtab_hdr.sh_link(endian) as usize;
        let strtab = table
            .section(object::SectionIndex(strtab_index))
            .ok()
            .filter(|s| s.sh_type(endian) == elf::SHT_STRTAB)
            .ok_or_else(|| {
                err(format!(
                    ".symtab: links to string table {strtab_index}, which is not one"
                ))
            })?;
        let strings = strtab
            .data(endian, data)
            .map_err(|_| err(".strtab: lies outside the file; truncated?".into()))?;

        crate::lap("load: sections");
        // Read in parallel, in chunks kept in order; the error reported is the first bad symbol's.
        const CHUNK: usize = 8192;
        type Part<'d> = (Vec<Symbol<'d>>, Vec<Symbol<'d>>);
        let parts: Vec<Result<Part<'data>, InputError>> = raw_symbols
            .par_chunks(CHUNK)
            .enumerate()
            .map(|(c, chunk)| {
                let mut out = Vec::with_capacity(chunk.len());
                let mut wanted = Vec::new();
                for (k, sym) in chunk.iter().enumerate() {
                    let i = c * CHUNK + k;
                    if i == 0 {
                        continue;
                    }
                    let kind = match sym.st_type() {
                        elf::STT_FUNC => SymKind::Func,
                        elf::STT_OBJECT => SymKind::Object,
                        elf::STT_NOTYPE => SymKind::NoType,
                        _ => continue,
                    };
                    let shndx = sym.st_shndx(endian);
                    if shndx == elf::SHN_UNDEF || shndx >= elf::SHN_LORESERVE {
                        continue;
                    }
                    let shndx = shndx as usize;
                    if shndx >= table.len() {
                        return Err(err(format!(
                            "symbol {i}: section index {shndx} out of range (the file has {} sections)",
                            table.len()
                        )));
                    }
                    let Some(section) = elf_to_sec[shndx] else {
                        continue;
                    };
                    let name_off = sym.st_name(endian) as usize;
                    let name = strings
                        .get(name_off..)
                        .and_then(|s| s.iter().position(|&b| b == 0).map(|end| &s[..end]))
                        .and_then(|n| std::str::from_utf8(n).ok())
                        .ok_or_else(|| {
                            err(format!(
                                "symbol {i}: name offset {name_off:#x} outside .strtab"
                            ))
                        })?;
                    if name.is_empty() {
                        continue;
                    }
                    let symbol = Symbol {
                        name,
                        addr: sym.st_value(endian),
                        size: sym.st_size(endian),
                        kind,
                        global: sym.st_bind() != elf::STB_LOCAL,
                        section,
                    };
                    if is_looked_up(name) {
                        wanted.push(symbol);
                    }
                    out.push(symbol);
                }
                Ok((out, wanted))
            })
            .collect();
        let parts = parts.into_iter().collect::<Result<Vec<_>, _>>()?;
        let mut symbols = crate::concat_par(&parts, |p| &p.0, |_, s| s);
        let mut looked_up: Vec<Symbol<'data>> = parts.iter().flat_map(|p| &p.1).copied().collect();
        drop(parts);
        crate::lap("load: symbols");
        symbols.par_sort_unstable_by(symbol_order);
        looked_up.sort_unstable_by(symbol_order);

        crate::lap("load: sort");
        Ok(Image {
            file,
            data,
            endian,
            sections,
            elf_to_sec,
            symbols,
            looked_up,
            relas,
            raw_symbols,
        })
    }

    pub fn exec_sections(&self) -> impl Iterator<Item = &Section<'data>> {
        self.sections
            .iter()
            .filter(|s| s.exec && !s.data.is_empty())
    }

    pub fn section_by_name(&self, name: &str) -> Option<&Section<'data>> {
        self.sections.iter().find(|s| s.name == name)
    }

    /// The allocated section holding `addr` (first match in header order).
    pub fn section_at(&self, addr: u64) -> Option<&Section<'data>> {
        self.sections
            .iter()
            .find(|s| s.contains(addr) && s.size != 0)
    }

    /// The first symbol named `name`.
    pub fn symbol(&self, name: &str) -> Option<&Symbol<'data>> {
        let among = if is_looked_up(name) {
            &self.looked_up
        } else {
            &self.symbols
        };
        among.iter().find(|s| s.name == name)
    }

    /// `len` file bytes at virtual address `addr`, if they all lie in one section with file data.
    pub fn bytes_at(&self, addr: u64, len: usize) -> Option<&'data [u8]> {
        let sec = self
            .sections
            .iter()
            .find(|s| !s.data.is_empty() && s.contains(addr))?;
        let off = (addr - sec.addr) as usize;
        sec.data.get(off..off.checked_add(len)?)
    }

    pub fn read_u64(&self, addr: u64) -> Option<u64> {
        self.bytes_at(addr, 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    }

    /// The bytes between the `__start_<name>` and `__stop_<name>` symbols the kernel's linker
    /// script places around its tables, or else the section called `name`.
    pub fn table(&self, name: &str) -> Option<(u64, &'data [u8])> {
        let start = self.symbol(&format!("__start_{name}"));
        let stop = self.symbol(&format!("__stop_{name}"));
        if let (Some(start), Some(stop)) = (start, stop) {
            if stop.addr >= start.addr {
                return self
                    .bytes_at(start.addr, (stop.addr - start.addr) as usize)
                    .map(|b| (start.addr, b));
            }
        }
        let sec = self.section_by_name(name)?;
        Some((sec.addr, sec.data))
    }

    /// Whether the link kept relocations for code (`ld --emit-relocs`); a few tables with
    /// relocations of their own do not count.
    pub fn has_relocations(&self) -> bool {
        self.relas.iter().any(|r| {
            self.elf_to_sec
                .get(r.target)
                .copied()
                .flatten()
                .is_some_and(|s| self.sections[s as usize].exec)
        })
    }

    /// Absolute targets of the relocations applied to the allocated section holding `addr`,
    /// as `(address patched, symbol value + addend)` pairs sorted by address.
    /// Empty when the image kept no relocations for it.
    pub fn reloc_targets(&self, section: &Section<'data>) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for r in self.relas.iter().filter(|r| r.target == section.index) {
            if r.symtab_index >= self.elf_to_sec.len() {
                continue;
            }
            for rela in r.relas {
                let sym = rela.r_sym(self.endian, false) as usize;
                let Some(s) = self.raw_symbols.get(sym) else {
                    continue;
                };
                let shndx = s.st_shndx(self.endian);
                let base = if shndx == elf::SHN_ABS || (shndx as usize) < self.elf_to_sec.len() {
                    s.st_value(self.endian)
                } else {
                    continue;
                };
                out.push((
                    rela.r_offset(self.endian),
                    base.wrapping_add(rela.r_addend(self.endian) as u64),
                ));
            }
        }
        out.sort_unstable();
        out
    }

    /// The kernel release string from `linux_banner`, e.g. "6.1.0-56-cloud-amd64".
    pub fn kernel_release(&self) -> Option<&'data str> {
        let sym = self.symbol("linux_banner")?;
        let bytes = self.bytes_at(sym.addr, sym.size.min(512) as usize)?;
        let text = std::str::from_utf8(bytes).ok()?;
        let rest = text.strip_prefix("Linux version ")?;
        rest.split(' ').next()
    }
}

/// The order of [`Image::symbols`]. Every field takes part, so an unstable (parallel) sort
/// still has one result; `then_with`: the names (strings in the mapped file) are compared only
/// on ties.
fn symbol_order(a: &Symbol<'_>, b: &Symbol<'_>) -> std::cmp::Ordering {
    a.addr
        .cmp(&b.addr)
        .then(b.size.cmp(&a.size))
        .then_with(|| a.name.cmp(b.name))
        .then_with(|| (a.kind as u8).cmp(&(b.kind as u8)))
        .then_with(|| a.global.cmp(&b.global))
        .then_with(|| a.section.cmp(&b.section))
}

/// The names stackval looks symbols up by: the linker-defined bounds of sections' contents
/// (`__start_<section>`, `__stop_<section>`), the return thunks and the kernel's banner. Any
/// other name is still found, by a pass over all symbols.
fn is_looked_up(name: &str) -> bool {
    name.starts_with("__start_")
        || name.starts_with("__stop_")
        || name == "linux_banner"
        || crate::known::RETURN_THUNKS.contains(&name)
}

fn machine_name(m: u16) -> &'static str {
    match m {
        elf::EM_386 => "i386",
        elf::EM_ARM => "ARM",
        elf::EM_AARCH64 => "AArch64",
        elf::EM_PPC64 => "PowerPC64",
        elf::EM_S390 => "s390",
        elf::EM_RISCV => "RISC-V",
        elf::EM_MIPS => "MIPS",
        elf::EM_LOONGARCH => "LoongArch",
        _ => "unknown",
    }
}
