//! The check of a plugin file before it is opened: is it a complete ELF shared library for
//! this machine?
//!
//! The dynamic loader maps a library's segments straight from the file; a segment that lies
//! past the end of a truncated file is mapped all the same, and the first touch of it kills the
//! process with SIGBUS. So before a library is opened, its ELF header is read and every
//! program header (segment) and every section with file contents, and the section header
//! table itself, must lie inside the file. The class (64-bit), byte order (little-endian),
//! type (`ET_DYN`) and machine (this host's: x86_64 or aarch64) must be this host's too.
//!
//! A hand-written reader of the few fixed-offset fields it needs (the ELF-64 layout is frozen),
//! rather than a general ELF crate: nothing here needs symbols, relocations or other formats.

use std::{fs::File, os::unix::fs::FileExt as _};

/// `e_type` of a shared object.
const ET_DYN: u16 = 3;
/// `e_machine` of x86_64.
const EM_X86_64: u16 = 62;
/// `e_machine` of aarch64.
const EM_AARCH64: u16 = 183;
/// `p_type` of a loadable segment.
const PT_LOAD: u32 = 1;
/// `sh_type` of a section that occupies no file space.
const SHT_NOBITS: u32 = 8;
/// Size of the ELF-64 file header, of one program header, of one section header.
const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
const SHDR_SIZE: u64 = 64;

/// The `e_machine` this host runs, if it is one plugins are built for.
fn host_machine() -> Option<u16> {
    match std::env::consts::ARCH {
        "x86_64" => Some(EM_X86_64),
        "aarch64" => Some(EM_AARCH64),
        _ => None,
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Reads `len` bytes at `offset`, which the caller has checked lie inside the file.
fn read_at(file: &File, offset: u64, len: u64) -> Result<Vec<u8>, String> {
    let mut buf = vec![0; usize::try_from(len).map_err(|_| "a header table is too large")?];
    file.read_exact_at(&mut buf, offset)
        .map_err(|e| format!("cannot read the file: {e}"))?;
    Ok(buf)
}

/// Whether `[offset, offset + size)` lies inside a file of `file_len` bytes.
fn inside(offset: u64, size: u64, file_len: u64) -> bool {
    offset.checked_add(size).is_some_and(|end| end <= file_len)
}

/// Why [`check`] refused a file.
#[derive(Debug)]
pub(super) enum Refusal {
    /// Not an ELF file at all (shorter than the header, or no magic number).
    NotElf(String),
    /// An ELF file that is not a complete shared object for this machine.
    Invalid(String),
}

/// Checks that `file` is a complete ELF-64 little-endian shared object for this machine.
pub(super) fn check(file: &File) -> Result<(), Refusal> {
    let file_len = file
        .metadata()
        .map_err(|e| Refusal::Invalid(format!("cannot read the file: {e}")))?
        .len();
    if file_len < EHDR_SIZE {
        return Err(Refusal::NotElf(format!(
            "{file_len} bytes is shorter than an ELF header ({EHDR_SIZE} bytes)"
        )));
    }
    let eh = read_at(file, 0, EHDR_SIZE).map_err(Refusal::Invalid)?;
    if eh[..4] != *b"\x7fELF" {
        return Err(Refusal::NotElf("no ELF magic number".into()));
    }
    check_elf(file, file_len, &eh).map_err(Refusal::Invalid)
}

/// The checks of a file with an ELF header `eh`.
fn check_elf(file: &File, file_len: u64, eh: &[u8]) -> Result<(), String> {
    if eh[4] != 2 {
        return Err(format!("ELF class {} is not 64-bit", eh[4]));
    }
    if eh[5] != 1 {
        return Err("big-endian ELF; this host is little-endian".into());
    }
    let e_type = u16_at(eh, 16);
    if e_type != ET_DYN {
        return Err(format!("ELF type {e_type} is not a shared object"));
    }
    let machine = u16_at(eh, 18);
    if host_machine() != Some(machine) {
        return Err(format!(
            "built for ELF machine {machine}, not this host's {}",
            std::env::consts::ARCH
        ));
    }
    let (phoff, shoff) = (u64_at(eh, 32), u64_at(eh, 40));
    let (phentsize, phnum) = (u64::from(u16_at(eh, 54)), u64::from(u16_at(eh, 56)));
    let (shentsize, mut shnum) = (u64::from(u16_at(eh, 58)), u64::from(u16_at(eh, 60)));

    if phnum == 0 || phentsize != PHDR_SIZE {
        return Err(format!(
            "{phnum} program headers of {phentsize} bytes: not a loadable library"
        ));
    }
    if !inside(phoff, phnum * PHDR_SIZE, file_len) {
        return Err(format!(
            "the program header table (at byte {phoff}) runs past the end of the file ({file_len} bytes): truncated"
        ));
    }
    let table = read_at(file, phoff, phnum * PHDR_SIZE)?;
    let mut loads = 0;
    for (i, ph) in table.chunks_exact(56).enumerate() {
        let (p_type, offset, filesz) = (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 32));
        if p_type == 0 {
            continue;
        }
        if p_type == PT_LOAD {
            loads += 1;
        }
        if !inside(offset, filesz, file_len) {
            return Err(format!(
                "segment {i} (bytes {offset}..{}) runs past the end of the file ({file_len} bytes): truncated",
                offset.saturating_add(filesz)
            ));
        }
    }
    if loads == 0 {
        return Err("no loadable segment".into());
    }

    if shoff == 0 {
        return Ok(());
    }
    if shentsize != SHDR_SIZE {
        return Err(format!(
            "section headers of {shentsize} bytes, not {SHDR_SIZE}"
        ));
    }
    if !inside(shoff, SHDR_SIZE, file_len) {
        return Err(format!(
            "the section header table (at byte {shoff}) lies past the end of the file ({file_len} bytes): truncated"
        ));
    }
    if shnum == 0 {
        // Extended numbering: the count is the first section header's `sh_size`.
        shnum = u64_at(&read_at(file, shoff, SHDR_SIZE)?, 32);
    }
    let Some(table_len) = shnum.checked_mul(SHDR_SIZE) else {
        return Err(format!("{shnum} section headers"));
    };
    if !inside(shoff, table_len, file_len) {
        return Err(format!(
            "the section header table ({shnum} entries at byte {shoff}) runs past the end of the file ({file_len} bytes): truncated"
        ));
    }
    let table = read_at(file, shoff, table_len)?;
    for (i, sh) in table.chunks_exact(64).enumerate() {
        let (sh_type, offset, size) = (u32_at(sh, 4), u64_at(sh, 24), u64_at(sh, 32));
        if sh_type == 0 || sh_type == SHT_NOBITS {
            continue;
        }
        if !inside(offset, size, file_len) {
            return Err(format!(
                "section {i} (bytes {offset}..{}) runs past the end of the file ({file_len} bytes): truncated",
                offset.saturating_add(size)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    /// This test binary itself is a complete ELF file for this machine (an executable, so its
    /// type is refused; the header checks before the type pass), and cut copies of it are
    /// refused before anything is opened.
    #[test]
    fn refuses_short_foreign_and_cut_files() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
            std::fs::File::open(&p).unwrap()
        };
        let not_elf = |f: File| match check(&f) {
            Err(Refusal::NotElf(reason)) => reason,
            other => panic!("{other:?}"),
        };
        assert!(not_elf(write("empty", b"")).contains("shorter than an ELF header"));
        assert!(not_elf(write("text", &[b'x'; 100])).contains("no ELF magic"));
        let check = |f: File| match check(&f) {
            Ok(()) => Ok(()),
            Err(Refusal::Invalid(reason)) => Err(reason),
            Err(other) => panic!("{other:?}"),
        };
        let mut header = [0u8; 64];
        header[..4].copy_from_slice(b"\x7fELF");
        header[4] = 1;
        let err = check(write("elf32", &header)).unwrap_err();
        assert!(err.contains("not 64-bit"), "{err}");
        header[4] = 2;
        header[5] = 2;
        let err = check(write("be", &header)).unwrap_err();
        assert!(err.contains("big-endian"), "{err}");
        header[5] = 1;
        header[16] = 3;
        header[18] = 0x28; // ARM (32-bit)
        let err = check(write("arm", &header)).unwrap_err();
        assert!(err.contains("machine 40"), "{err}");

        // A shared object of this machine whose program header table is past the end.
        let machine = host_machine().unwrap().to_le_bytes();
        header[18..20].copy_from_slice(&machine);
        header[32..40].copy_from_slice(&4096u64.to_le_bytes());
        header[54..56].copy_from_slice(&56u16.to_le_bytes());
        header[56..58].copy_from_slice(&3u16.to_le_bytes());
        let err = check(write("cut", &header)).unwrap_err();
        assert!(err.contains("program header table"), "{err}");
        assert!(err.contains("truncated"), "{err}");

        // A segment past the end.
        let mut lib = header.to_vec();
        lib[32..40].copy_from_slice(&64u64.to_le_bytes());
        lib[56..58].copy_from_slice(&1u16.to_le_bytes());
        let mut ph = [0u8; 56];
        ph[0..4].copy_from_slice(&PT_LOAD.to_le_bytes());
        ph[8..16].copy_from_slice(&0u64.to_le_bytes());
        ph[32..40].copy_from_slice(&1_000_000u64.to_le_bytes());
        lib.extend_from_slice(&ph);
        let err = check(write("seg", &lib)).unwrap_err();
        assert!(err.contains("segment 0"), "{err}");
        // The same segment inside the file passes.
        let len = lib.len() as u64;
        lib[64 + 32..64 + 40].copy_from_slice(&len.to_le_bytes());
        check(write("ok", &lib)).unwrap();
        // A section header table past the end.
        lib[40..48].copy_from_slice(&len.to_le_bytes());
        lib[58..60].copy_from_slice(&64u16.to_le_bytes());
        lib[60..62].copy_from_slice(&2u16.to_le_bytes());
        let err = check(write("sh", &lib)).unwrap_err();
        assert!(err.contains("section header table"), "{err}");
    }
}
