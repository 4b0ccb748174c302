//! Fixture tests: every `tests/fixtures/*.S` is assembled and linked at test time like a
//! vmlinux (`gcc -c`, `ld --emit-relocs` with `kernel.lds`), then checked by the stackval
//! binary. Each fixture states what must happen in comment lines:
//!
//! ```text
//! # args: --frame-pointer                          extra arguments to `stackval check`
//! # expect: func()+0x5: call without frame pointer save/setup
//! # link: both                                     also link without --emit-relocs
//! ```
//!
//! The findings printed must be exactly the `expect` lines (none for a clean fixture), and
//! the exit code 1 when there are findings, 0 when there are none.

use std::path::{Path, PathBuf};
use std::process::Command;

use stackval::decode::Kind;

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Assembles and links one fixture; returns the image path.
pub fn build_fixture(src: &Path, relocs: bool) -> PathBuf {
    build_fixture_in("fixtures", src, relocs)
}

/// Builds into `target/tmp/<dir>`: tests running at the same time use different ones.
fn build_fixture_in(dir: &str, src: &Path, relocs: bool) -> PathBuf {
    let out_dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let stem = src.file_stem().unwrap().to_str().unwrap();
    let obj = out_dir.join(format!("{stem}.o"));
    let elf = out_dir.join(format!(
        "{stem}{}.elf",
        if relocs { "" } else { "-norelocs" }
    ));
    let dir = fixtures_dir();
    run(Command::new("gcc")
        .args(["-c", "-nostdlib", "-I"])
        .arg(&dir)
        .arg("-o")
        .arg(&obj)
        .arg(src));
    run(Command::new("ld")
        .args(relocs.then_some("--emit-relocs"))
        .args(["-z", "noexecstack", "-T"])
        .arg(dir.join("kernel.lds"))
        .arg("-o")
        .arg(&elf)
        .arg(&obj));
    elf
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Expectation {
    args: Vec<String>,
    both_links: bool,
    findings: Vec<String>,
}

fn expectation(src: &Path) -> Expectation {
    let text = std::fs::read_to_string(src).unwrap();
    let mut e = Expectation {
        args: Vec::new(),
        both_links: false,
        findings: Vec::new(),
    };
    for line in text.lines() {
        let line = line
            .trim()
            .trim_start_matches(['#', '/', '*', ' '])
            .trim_end_matches("*/")
            .trim();
        if let Some(a) = line.strip_prefix("args:") {
            e.args.extend(a.split_whitespace().map(str::to_owned));
        } else if let Some(l) = line.strip_prefix("link:") {
            e.both_links = l.trim() == "both";
        } else if let Some(f) = line.strip_prefix("expect:") {
            e.findings.push(f.trim().to_owned());
        }
    }
    e
}

/// Runs stackval on a fixture; returns (exit code, findings with the file prefix removed).
fn check(elf: &Path, args: &[String]) -> (i32, Vec<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_stackval"))
        .args(["check", "--no-progress", "--quiet"])
        .args(args)
        .arg(elf)
        .output()
        .unwrap();
    let prefix = format!("{}: warning: stackval: ", elf.display());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let findings = stdout
        .lines()
        .map(|l| l.strip_prefix(&prefix).unwrap_or(l).to_owned())
        .collect();
    (out.status.code().unwrap_or(-1), findings)
}

#[test]
fn fixtures() {
    let mut sources: Vec<PathBuf> = std::fs::read_dir(fixtures_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "S"))
        .collect();
    sources.sort();
    assert!(sources.len() >= 20, "fixtures missing: {sources:?}");
    let mut failures = Vec::new();
    for src in &sources {
        let want = expectation(src);
        let links: &[bool] = if want.both_links {
            &[true, false]
        } else {
            &[true]
        };
        for &relocs in links {
            let elf = build_fixture(src, relocs);
            let (code, mut got) = check(&elf, &want.args);
            let mut expected = want.findings.clone();
            got.sort();
            expected.sort();
            let want_code = if expected.is_empty() { 0 } else { 1 };
            if got != expected || code != want_code {
                failures.push(format!(
                    "{}{}:\n  expected (exit {want_code}): {expected:#?}\n  got (exit {code}): {got:#?}",
                    src.file_name().unwrap().to_string_lossy(),
                    if relocs { "" } else { " (linked without relocations)" },
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} fixture(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Decoding in many small batches (every piece its own, branches resolved across them) gives
/// the same instruction list as decoding everything in one.
#[test]
fn batched_decode_matches_one_batch() {
    use stackval::decode::decode_image_in;
    let mut compared = 0;
    for entry in std::fs::read_dir(fixtures_dir()).unwrap() {
        let src = entry.unwrap().path();
        if src.extension().is_none_or(|x| x != "S") {
            continue;
        }
        let elf = build_fixture_in("fixtures-batched", &src, true);
        let map = stackval::map_file(&elf).unwrap();
        let Ok(image) = stackval::image::Image::parse(&elf, &map) else {
            continue;
        };
        // One batch; every piece its own batch, most decoded straight into the list (a batch
        // over four times the size is); and batches of a few pieces, most through a scratch
        // list.
        let decoded: Vec<(usize, _)> = [usize::MAX, 1, 64]
            .into_iter()
            .map(|size| (size, decode_image_in(&image, size)))
            .collect();
        let whole = &decoded[0].1;
        assert!(!whole.list.is_empty(), "{}", src.display());
        for (size, split) in &decoded[1..] {
            let at = format!("{} in batches of {size}", src.display());
            assert_eq!(&whole.list[..], &split.list[..], "{at}");
            assert_eq!(whole.calls, split.calls, "{at}");
            assert_eq!(whole.jumps, split.jumps, "{at}");
            assert_eq!(whole.returns, split.returns, "{at}");
            assert_eq!(whole.indirect_jumps, split.indirect_jumps, "{at}");
        }
        // The side lists hold exactly the list's instructions of their kinds.
        let of = |k: &[Kind]| -> Vec<u32> {
            (0..whole.len() as u32)
                .filter(|&n| k.contains(&whole.get(n).kind))
                .collect()
        };
        let firsts = |v: &[(u32, u32)]| v.iter().map(|e| e.0).collect::<Vec<_>>();
        assert_eq!(firsts(&whole.calls), of(&[Kind::Call]));
        assert_eq!(firsts(&whole.jumps), of(&[Kind::Jump, Kind::JumpCond]));
        assert_eq!(whole.returns, of(&[Kind::Return]));
        assert_eq!(whole.indirect_jumps, of(&[Kind::JumpIndirect]));
        // The address index finds every instruction, and nothing between instructions, however
        // the list was decoded.
        for (size, split) in &decoded {
            let at = format!("{} in batches of {size}", src.display());
            for (n, i) in split.list.iter().enumerate() {
                assert_eq!(split.at(i.addr()), Some(n as u32), "{at}");
                if i.len > 1 {
                    assert_eq!(split.at(i.addr() + 1), None, "{at}");
                    assert_eq!(split.lower_bound(i.addr() + 1), n as u32 + 1, "{at}");
                }
            }
            // Between sections (and anywhere else no instruction starts), the next one.
            for (n, w) in split.list.windows(2).enumerate() {
                let (end, next) = (w[0].end(), w[1].addr());
                for a in [
                    end,
                    end + next.saturating_sub(end) / 2,
                    next.saturating_sub(1),
                ] {
                    if a >= end && a < next {
                        assert_eq!(split.lower_bound(a), n as u32 + 1, "{at}: {a:#x}");
                    }
                }
            }
            if let Some(first) = split.list.first() {
                assert_eq!(split.lower_bound(first.addr().saturating_sub(1)), 0, "{at}");
            }
        }
        compared += 1;
    }
    assert!(compared >= 20, "only {compared} fixtures compared");
}
