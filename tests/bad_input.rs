//! Inputs that cannot be checked: each must give exit status 2 and one error line
//! `stackval: <file>: <what is wrong>` on stderr, never a panic, and must leave the file as it was.
//!
//! The inputs are made at test time from a tiny x86-64 image assembled with `gcc` and linked
//! with `ld`, then damaged by patching a few bytes of its ELF headers.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SOURCE: &str = "\
.text
.globl f
.type f,@function
f: push %rbp; mov %rsp,%rbp; pop %rbp; ret
.size f,.-f
";

/// A fresh, empty directory for one test.
fn tmpdir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("bad_input")
        .join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_tool(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Assembles and links the small valid image; returns (x.o, x.elf).
fn build_valid(dir: &Path) -> (PathBuf, PathBuf) {
    let src = dir.join("x.S");
    let obj = dir.join("x.o");
    let elf = dir.join("x.elf");
    fs::write(&src, SOURCE).unwrap();
    run_tool("gcc", &["-c", s(&src), "-o", s(&obj)]);
    run_tool(
        "ld",
        &[
            "-o",
            s(&elf),
            "--emit-relocs",
            "-Ttext=0xffffffff81000000",
            "-e",
            "f",
            s(&obj),
        ],
    );
    (obj, elf)
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `stackval check --no-progress <path>`, killing it if it hangs.
fn stackval(dir: &Path, path: &Path) -> Run {
    let out_path = dir.join("stdout.txt");
    let err_path = dir.join("stderr.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_stackval"))
        .args(["check", "--no-progress"])
        .arg(path)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("stackval hung on {}", path.display());
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Run {
        code: status.code(),
        stdout: fs::read_to_string(&out_path).unwrap(),
        stderr: fs::read_to_string(&err_path).unwrap(),
    }
}

/// Checks `path` and asserts it is rejected with one error line naming the file and
/// containing every string of `expect`, and that the file was not touched.
fn assert_rejected(dir: &Path, path: &Path, expect: &[&str]) {
    let before = fs::read(path).ok();
    let run = stackval(dir, path);
    let after = fs::read(path).ok();
    let stderr = &run.stderr;
    assert!(
        !stderr.contains("panicked"),
        "stackval panicked on {}:\n{stderr}",
        path.display()
    );
    assert_eq!(
        run.code,
        Some(2),
        "exit status for {}; stderr:\n{stderr}",
        path.display()
    );
    assert_eq!(run.stdout, "", "nothing on stdout for {}", path.display());
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one error line expected, got:\n{stderr}");
    let prefix = format!("stackval: {}: ", path.display());
    assert!(
        lines[0].starts_with(&prefix),
        "error line should start with {prefix:?}: {stderr}"
    );
    for word in expect {
        assert!(
            lines[0].contains(word),
            "error line should contain {word:?}: {stderr}"
        );
    }
    assert!(before == after, "{} was modified", path.display());
}

// Little-endian ELF64 field access.

fn rd16(d: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(d[off..off + 2].try_into().unwrap())
}
fn rd32(d: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(d[off..off + 4].try_into().unwrap())
}
fn rd64(d: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(d[off..off + 8].try_into().unwrap())
}
fn wr16(d: &mut [u8], off: usize, v: u16) {
    d[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn wr32(d: &mut [u8], off: usize, v: u32) {
    d[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn wr64(d: &mut [u8], off: usize, v: u64) {
    d[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

const SHT_SYMTAB: u32 = 2;

/// File offsets of all section headers.
fn section_headers(d: &[u8]) -> Vec<usize> {
    let shoff = rd64(d, 0x28) as usize;
    let shentsize = rd16(d, 0x3a) as usize;
    let shnum = rd16(d, 0x3c) as usize;
    assert_eq!(shentsize, 64);
    (0..shnum).map(|i| shoff + i * shentsize).collect()
}

/// NUL-terminated string at `off` of the string table section whose header is at `sh`.
fn str_at(d: &[u8], sh: usize, off: usize) -> &str {
    let start = rd64(d, sh + 0x18) as usize + off;
    let end = start + d[start..].iter().position(|&b| b == 0).unwrap();
    std::str::from_utf8(&d[start..end]).unwrap()
}

/// Header offset of the section called `name`.
fn section(d: &[u8], name: &str) -> usize {
    let shs = section_headers(d);
    let shstr = shs[rd16(d, 0x3e) as usize];
    *shs.iter()
        .find(|&&sh| str_at(d, shstr, rd32(d, sh) as usize) == name)
        .unwrap_or_else(|| panic!("no section {name}"))
}

/// File offset of the Elf64_Sym called `name`.
fn symbol(d: &[u8], name: &str) -> usize {
    let shs = section_headers(d);
    let symtab = *shs
        .iter()
        .find(|&&sh| rd32(d, sh + 4) == SHT_SYMTAB)
        .expect("no .symtab");
    let strtab = shs[rd32(d, symtab + 0x28) as usize];
    let (off, size) = (rd64(d, symtab + 0x18) as usize, rd64(d, symtab + 0x20));
    (0..size as usize / 24)
        .map(|i| off + i * 24)
        .find(|&sym| str_at(d, strtab, rd32(d, sym) as usize) == name)
        .unwrap_or_else(|| panic!("no symbol {name}"))
}

/// Writes a copy of the valid image to `dir/name`, changed by `patch`.
fn patched(dir: &Path, name: &str, patch: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
    let (_, elf) = build_valid(dir);
    let mut d = fs::read(elf).unwrap();
    patch(&mut d);
    let path = dir.join(name);
    fs::write(&path, d).unwrap();
    path
}

/// The base image every other test damages is itself accepted, so a rejection below is due
/// to the damage and nothing else.
#[test]
fn valid_image_is_accepted() {
    let dir = tmpdir("valid");
    let (_, elf) = build_valid(&dir);
    let before = fs::read(&elf).unwrap();
    let run = stackval(&dir, &elf);
    assert_eq!(run.code, Some(0), "stderr:\n{}", run.stderr);
    assert!(run.stderr.contains("1 functions"), "{}", run.stderr);
    assert_eq!(fs::read(&elf).unwrap(), before);
}

#[test]
fn missing_file() {
    let dir = tmpdir("missing");
    let path = dir.join("no-such-vmlinux");
    assert_rejected(&dir, &path, &["cannot open"]);
    assert!(!path.exists());
}

#[test]
fn empty_file() {
    let dir = tmpdir("empty");
    let path = dir.join("empty");
    fs::write(&path, b"").unwrap();
    assert_rejected(&dir, &path, &["empty file"]);
}

#[test]
fn not_elf() {
    let dir = tmpdir("not_elf");
    let text = dir.join("notes.txt");
    fs::write(
        &text,
        "This is a plain text file, not a kernel image; it is long enough to hold an ELF header.\n",
    )
    .unwrap();
    assert_rejected(&dir, &text, &["not an ELF file"]);
    let short = dir.join("short.txt");
    fs::write(&short, "hello\n").unwrap();
    assert_rejected(&dir, &short, &["too short", "6 bytes"]);
}

#[test]
fn truncated_elf() {
    let dir = tmpdir("truncated");
    let (_, elf) = build_valid(&dir);
    let d = fs::read(elf).unwrap();
    let half = dir.join("half.elf");
    fs::write(&half, &d[..d.len() / 2]).unwrap();
    assert_rejected(
        &dir,
        &half,
        &["section header table", "outside the file", "truncated"],
    );
    let head = dir.join("head40.elf");
    fs::write(&head, &d[..40]).unwrap();
    assert_rejected(&dir, &head, &["truncated ELF header", "40 bytes"]);
}

#[test]
fn elf32() {
    let dir = tmpdir("elf32");
    // ELFCLASS32 in the identification bytes of the 64-bit image.
    let patched = patched(&dir, "class32.elf", |d| d[4] = 1);
    assert_rejected(&dir, &patched, &["32-bit ELF"]);
    // A real 32-bit object, where the toolchain can make one.
    let src = dir.join("y.S");
    let obj = dir.join("y32.o");
    fs::write(&src, SOURCE.replace("%r", "%e")).unwrap();
    let built = Command::new("gcc")
        .args(["-m32", "-c", s(&src), "-o", s(&obj)])
        .output()
        .is_ok_and(|o| o.status.success());
    if built {
        assert_eq!(fs::read(&obj).unwrap()[4], 1, "gcc -m32 made ELFCLASS32");
        assert_rejected(&dir, &obj, &["32-bit ELF"]);
    } else {
        eprintln!("gcc -m32 unavailable; checked the patched image only");
    }
}

#[test]
fn non_x86_machine() {
    let dir = tmpdir("aarch64");
    let path = patched(&dir, "aarch64.elf", |d| wr16(d, 0x12, 183));
    assert_rejected(&dir, &path, &["machine 183", "AArch64", "not x86-64"]);
}

#[test]
fn relocatable_object() {
    let dir = tmpdir("et_rel");
    let (obj, _) = build_valid(&dir);
    assert_eq!(
        rd16(&fs::read(&obj).unwrap(), 0x10),
        1,
        "gcc -c made ET_REL"
    );
    assert_rejected(&dir, &obj, &["ET_REL"]);
}

#[test]
fn shared_object() {
    let dir = tmpdir("et_dyn");
    let path = patched(&dir, "dyn.elf", |d| wr16(d, 0x10, 3));
    assert_rejected(&dir, &path, &["ET_DYN"]);
}

#[test]
fn section_outside_file() {
    let dir = tmpdir("section_offset");
    let path = patched(&dir, "textoff.elf", |d| {
        let text = section(d, ".text");
        wr64(d, text + 0x18, 0xffff_ffff_ff00_0000);
    });
    assert_rejected(
        &dir,
        &path,
        &[
            "section .text",
            "offset 0xffffffffff000000",
            "outside the file",
        ],
    );
}

#[test]
fn section_address_wraps() {
    let dir = tmpdir("section_address");
    let path = patched(&dir, "textaddr.elf", |d| {
        let text = section(d, ".text");
        wr64(d, text + 0x10, u64::MAX - 1);
    });
    assert_rejected(&dir, &path, &["section .text", "address space"]);
}

#[test]
fn symbol_bad_section_index() {
    let dir = tmpdir("symbol_shndx");
    let path = patched(&dir, "shndx.elf", |d| {
        let f = symbol(d, "f");
        assert_ne!(rd16(d, f + 6), 0, "f is defined");
        wr16(d, f + 6, 0x7000);
    });
    assert_rejected(&dir, &path, &["section index 28672 out of range"]);
}

#[test]
fn symbol_bad_name_offset() {
    let dir = tmpdir("symbol_name");
    let path = patched(&dir, "stname.elf", |d| {
        let f = symbol(d, "f");
        wr32(d, f, 0x7fff_ffff);
    });
    assert_rejected(&dir, &path, &["name offset 0x7fffffff", "outside .strtab"]);
}

#[test]
fn stripped_image() {
    let dir = tmpdir("stripped");
    let (_, elf) = build_valid(&dir);
    let path = dir.join("stripped.elf");
    run_tool("objcopy", &["--strip-all", s(&elf), s(&path)]);
    let d = fs::read(&path).unwrap();
    assert!(
        section_headers(&d)
            .iter()
            .all(|&sh| rd32(&d, sh + 4) != SHT_SYMTAB),
        "objcopy --strip-all left a .symtab"
    );
    assert_rejected(&dir, &path, &["no symbol table"]);
}

/// Executable sections whose addresses overlap (`ld --no-check-sections` links them; no kernel
/// has them) are decoded and checked, section by section, rather than crashing the decoder: a
/// batch of pieces used to size its table of instruction starts by its last piece's end, which
/// a piece nested in an earlier one cuts short.
#[test]
fn overlapping_code_sections_are_checked() {
    let dir = tmpdir("overlap");
    let src = dir.join("x.S");
    let obj = dir.join("x.o");
    let elf = dir.join("x.elf");
    fs::write(
        &src,
        format!(
            "{SOURCE}.section .othertext,\"ax\",@progbits\n.globl g\n.type g,@function\ng: nop; nop; ret\n.size g,.-g\n"
        ),
    )
    .unwrap();
    run_tool("gcc", &["-c", s(&src), "-o", s(&obj)]);
    run_tool(
        "ld",
        &[
            "-o",
            s(&elf),
            "--no-check-sections",
            "-Ttext=0xffffffff81000000",
            "--section-start=.othertext=0xffffffff81000002",
            "-e",
            "f",
            s(&obj),
        ],
    );
    let run = stackval(&dir, &elf);
    assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
    assert!(
        matches!(run.code, Some(0 | 1)),
        "exit status {:?}; stderr:\n{}",
        run.code,
        run.stderr
    );
    assert!(run.stderr.contains("2 functions"), "{}", run.stderr);
}

/// Code linked outside the address ranges an instruction's address is kept in (32 bits,
/// sign-extended: the kernel's top 2 GiB, or the lowest 2 GiB) is refused with a clear error,
/// whichever end of a section lies outside; code at the edges of both ranges is checked.
#[test]
fn code_outside_the_kernel_address_range() {
    let dir = tmpdir("code_outside_the_kernel_address_range");
    let src = dir.join("x.S");
    let obj = dir.join("x.o");
    fs::write(&src, SOURCE).unwrap();
    run_tool("gcc", &["-c", s(&src), "-o", s(&obj)]);
    // f() is 6 bytes long.
    let cases = [
        ("0x100000000", false),
        ("0xffffffff7ffffffc", false),
        ("0x7ffffffc", false),
        ("0x7ffffffa", true),
        ("0xffffffff80000000", true),
        ("0xfffffffffffff000", true),
    ];
    for (at, fits) in cases {
        let elf = dir.join(format!("x-{at}.elf"));
        run_tool(
            "ld",
            &[
                "-o",
                s(&elf),
                "--emit-relocs",
                &format!("-Ttext={at}"),
                "-e",
                "f",
                s(&obj),
            ],
        );
        if fits {
            let run = stackval(&dir, &elf);
            assert!(!run.stderr.contains("panicked"), "{at}: {}", run.stderr);
            assert_eq!(run.code, Some(0), "{at}: {}", run.stderr);
            assert!(run.stderr.contains("1 functions"), "{at}: {}", run.stderr);
        } else {
            assert_rejected(
                &dir,
                &elf,
                &["section .text", "outside the x86-64 kernel's address range"],
            );
        }
    }
}
