//! Real Debian kernels: `stackval check` runs to completion on the 6.1 cloud vmlinux (with
//! relocations and ORC) and the 6.12 cloud vmlinux (without relocations), reports no finding on
//! these correct, objtool-built images, confirms their ORC tables, and its output does not
//! depend on the number of threads.
//!
//! The images are fetched and cached by `scripts/fetch-kernels.sh` (about 500 MB once), so
//! these tests are ignored by a plain `cargo test`; `scripts/test.sh` runs them.
//! `STACKVAL_KERNELS` names another set for the script (`flavours`: Debian's generic and
//! PREEMPT_RT images of the same releases, about 3.5 GB to download once), checked the same way.

use std::path::PathBuf;
use std::process::Command;

fn kernels() -> Vec<(String, PathBuf)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/fetch-kernels.sh");
    let set = std::env::var("STACKVAL_KERNELS").unwrap_or_else(|_| "all".to_owned());
    let out = Command::new("bash")
        .arg(script)
        .arg(&set)
        .output()
        .expect("run fetch-kernels.sh");
    assert!(
        out.status.success(),
        "fetch-kernels.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<(String, PathBuf)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(f, p)| (f.to_owned(), PathBuf::from(p)))
        .collect();
    let want = match set.as_str() {
        "all" => 2,
        "flavours" => 4,
        _ => 1,
    };
    assert_eq!(
        list.len(),
        want,
        "expected {want} images for {set}: {list:?}"
    );
    list
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Each kernel of [`kernels`], mapped and parsed, handed to `f` with its name.
fn each_image(mut f: impl FnMut(&str, &stackval::image::Image<'_>)) {
    for (flavour, path) in kernels() {
        let map = stackval::map_file(&path).unwrap();
        let image = stackval::image::Image::parse(&path, &map).unwrap();
        f(&flavour, &image);
    }
}

fn stackval(args: &[&str], image: &PathBuf) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_stackval"))
        .args(["check", "--no-progress"])
        .args(args)
        .arg(image)
        .output()
        .unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// The number before `word` in the summary line.
fn count_before(summary: &str, word: &str) -> u64 {
    let i = summary
        .find(word)
        .unwrap_or_else(|| panic!("no {word:?} in {summary:?}"));
    summary[..i]
        .split_whitespace()
        .last()
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("no count before {word:?} in {summary:?}"))
}

#[test]
#[ignore = "downloads Debian kernels; run by scripts/test.sh"]
fn debian_kernels_check_to_completion() {
    for (flavour, image) in kernels() {
        let run = stackval(&[], &image);
        assert!(
            run.code == 0 || run.code == 1,
            "{flavour}: exit {}\n{}",
            run.code,
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        let summary = run.stderr.lines().last().unwrap_or_default();
        let functions = count_before(summary, "functions");
        let instructions = count_before(summary, "instructions");
        let findings = count_before(summary, "findings");
        eprintln!("{flavour}: {summary}");
        assert!(functions > 20_000, "{flavour}: only {functions} functions");
        assert!(
            instructions > 2_000_000,
            "{flavour}: only {instructions} instructions"
        );
        assert_eq!(
            findings as usize,
            run.stdout.lines().count(),
            "{flavour}: summary vs output"
        );
        // objtool validated these images when Debian built them: nothing to report.
        assert_eq!(findings, 0, "{flavour}:\n{}", run.stdout);
        // Debian's 5.10 and 6.1 images keep their relocations (`ld --emit-relocs`); 6.12's
        // and later ones are stripped.
        let want_relocs =
            flavour == "6.1" || flavour.starts_with("6.1-") || flavour.starts_with("bullseye");
        assert_eq!(
            summary.contains("relocations"),
            want_relocs,
            "{flavour}: {summary}"
        );

        // Deterministic whatever the thread count.
        let one = stackval(&["--jobs", "1", "--quiet"], &image);
        assert_eq!(one.code, run.code);
        assert!(
            one.stdout == run.stdout,
            "{flavour}: --jobs 1 output differs"
        );

        // JSON: one object per finding, with the same count.
        let json = stackval(&["--format", "json", "--quiet"], &image);
        assert_eq!(json.stdout.lines().count(), run.stdout.lines().count());
        for line in json.stdout.lines().take(100) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            for key in [
                "kind", "function", "offset", "address", "section", "message",
            ] {
                assert!(v.get(key).is_some(), "{flavour}: no {key} in {line}");
            }
        }
    }
}

/// `Image::symbol` answers the names it keeps aside (section bounds, return thunks, the
/// banner) from a short list: the same symbol as a search of them all.
#[test]
#[ignore = "downloads Debian kernels; run by scripts/test.sh"]
fn symbols_looked_up_by_name_match_a_full_search() {
    each_image(|flavour, image| {
        let mut names: Vec<&str> = image
            .symbols
            .iter()
            .map(|s| s.name)
            .filter(|n| n.starts_with("__start_") || n.starts_with("__stop_"))
            .collect();
        assert!(
            names.len() > 10,
            "{flavour}: only {} section bounds",
            names.len()
        );
        names.extend(stackval::known::RETURN_THUNKS);
        names.extend(["linux_banner", "__start_no_such_table", "schedule"]);
        for name in names {
            let full = image.symbols.iter().find(|s| s.name == name);
            let got = image.symbol(name);
            assert_eq!(
                got.map(|s| (s.addr, s.size, s.section)),
                full.map(|s| (s.addr, s.size, s.section)),
                "{flavour}: {name}"
            );
        }
    });
}

/// The decoder for simple forms (`decode::quick`) agrees with iced-x86 and classification on
/// every instruction of the real kernels, and takes most of them.
#[test]
#[ignore = "downloads Debian kernels; run by scripts/test.sh"]
fn quick_decoder_agrees_with_iced_on_every_instruction() {
    each_image(|flavour, image| {
        let (taken, all) = stackval::decode::compare_quick(image)
            .unwrap_or_else(|at| panic!("{flavour}: the two decoders disagree at {at:#x}"));
        eprintln!("{flavour}: {taken} of {all} instructions decoded without iced-x86");
        assert!(taken * 2 > all, "{flavour}: only {taken} of {all}");
    });
}
