//! Criterion benchmarks of stackval's hot paths, on a synthetic kernel-like image built at
//! bench time by `scripts/gen-synthetic.py` (gcc + ld, cached in `target/bench-synthetic/`).
//!
//! ```sh
//! cargo bench --bench hot_paths                 # all, about a minute
//! cargo bench --bench hot_paths -- --quick      # a rougher, faster pass
//! cargo bench --bench hot_paths -- graph        # only the graph benchmarks
//! STACKVAL_BENCH_TEXT_MB=8 cargo bench --bench hot_paths   # a bigger image
//! ```
//!
//! Each phase is measured alone on inputs prepared once: decoding (the whole image in
//! parallel, and one section on one thread), reading the kernel's tables, building the call
//! graph with noreturn inference, the per-function walk (with and without ORC verification),
//! and ORC lookups and comparisons.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use stackval::check::{self, state::Cfi};
use stackval::decode::{self, Insns};
use stackval::graph::{self, Graph};
use stackval::image::Image;
use stackval::kernel::{self, Tables};

/// Builds (or finds cached) the synthetic image; its size comes from `STACKVAL_BENCH_TEXT_MB`.
fn synthetic_image() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mb = std::env::var("STACKVAL_BENCH_TEXT_MB").unwrap_or_else(|_| "2".into());
    let out = root
        .join("target/bench-synthetic")
        .join(format!("synthetic-{mb}mb-seed1.elf"));
    let status = Command::new("python3")
        .arg(root.join("scripts/gen-synthetic.py"))
        .args(["--text-mb", &mb, "--seed", "1", "--out"])
        .arg(&out)
        .status()
        .expect("cannot run python3 scripts/gen-synthetic.py (needs python3, gcc and ld)");
    assert!(status.success(), "gen-synthetic.py failed");
    out
}

/// Everything the phases need, built once and kept for the whole run.
struct Inputs {
    image: Image<'static>,
    insns: Insns,
    tables: Tables,
    graph: Graph<'static>,
    sections: Vec<(u64, u64)>,
    /// Code where unwind hints are not looked for: the alternatives' replacement sections
    /// (`check_image` adds the holes between symbols, which this image has only as padding).
    unhinted: Vec<(u64, u64)>,
}

fn inputs() -> &'static Inputs {
    let path: &'static Path = Box::leak(synthetic_image().into_boxed_path());
    let map: &'static memmap2::Mmap =
        Box::leak(Box::new(stackval::map_file(path).expect("map image")));
    let image = Image::parse(path, &map[..]).expect("parse image");
    let mut insns = decode::decode_image(&image);
    let tables = kernel::read(&image, &insns);
    let graph = graph::build(&image, &mut insns, &tables, false);
    let (sections, unhinted) = stackval::code_ranges(&image);
    let i = Box::leak(Box::new(Inputs {
        image,
        insns,
        tables,
        graph,
        sections,
        unhinted,
    }));
    assert!(
        i.tables.orc.is_some(),
        "the synthetic image has an ORC table"
    );
    eprintln!(
        "hot_paths: {}: {} bytes of text, {} instructions, {} functions, {} ORC entries",
        path.display(),
        i.insns.bytes,
        i.insns.len(),
        i.graph.funcs.len(),
        i.tables.orc.as_ref().map_or(0, |o| o.ips.len())
    );
    i
}

fn decoding(c: &mut Criterion, inp: &Inputs) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(inp.insns.bytes));
    g.bench_function("decode_image", |b| {
        b.iter(|| black_box(decode::decode_image(&inp.image)))
    });
    // One core's speed: the .text section in one piece, into a reused buffer.
    let text = inp.image.section_by_name(".text").expect("a .text section");
    g.throughput(Throughput::Bytes(text.data.len() as u64));
    let mut out = Vec::with_capacity(text.data.len() / 3);
    g.bench_function("decode_into_text_1_thread", |b| {
        b.iter(|| {
            out.clear();
            decode::decode_into(text.addr, text.data, &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

fn tables_and_graph(c: &mut Criterion, inp: &Inputs) {
    let mut g = c.benchmark_group("graph");
    g.throughput(Throughput::Elements(inp.graph.funcs.len() as u64));
    g.bench_function("kernel_tables_read", |b| {
        b.iter(|| black_box(kernel::read(&inp.image, &inp.insns)))
    });
    // Functions, edges, switch tables, branch targets and noreturn inference.
    // Building notes callees in the list: a copy of it, so the shared one stays as it is.
    let mut insns = decode::decode_image(&inp.image);
    g.bench_function("build_with_noreturn", |b| {
        b.iter(|| black_box(graph::build(&inp.image, &mut insns, &inp.tables, false)))
    });
    g.finish();
}

fn walk(c: &mut Criterion, inp: &Inputs) {
    let mut g = c.benchmark_group("check");
    let roots = inp.graph.funcs.iter().filter(|f| f.skip.is_none()).count();
    g.throughput(Throughput::Elements(roots as u64));
    for (name, verify_orc) in [("run_with_orc", true), ("run_without_orc", false)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                let out = check::run(
                    &inp.insns,
                    &inp.graph,
                    &inp.tables,
                    &inp.sections,
                    &inp.unhinted,
                    check::Config {
                        frame_pointer: false,
                        verify_orc,
                    },
                    None,
                );
                assert!(out.findings.is_empty(), "the synthetic image checks clean");
                black_box(out.insns_visited)
            })
        });
    }
    g.finish();
}

fn orc(c: &mut Criterion, inp: &Inputs) {
    let orc = inp.tables.orc.as_ref().unwrap();
    let mut g = c.benchmark_group("orc");
    // Every instruction's address, in address order (as a walk of the whole image asks).
    let addrs: Vec<u64> = inp.insns.list.iter().map(|i| i.addr()).collect();
    let lookup_all = |addrs: &[u64]| {
        let mut n = 0u64;
        for &a in addrs {
            if let Some((ip, e)) = orc.lookup(a) {
                n = n.wrapping_add(ip ^ e.sp_offset as u64);
            }
        }
        black_box(n)
    };
    g.throughput(Throughput::Elements(addrs.len() as u64));
    g.bench_function("lookup_every_insn_sorted", |b| {
        b.iter(|| lookup_all(&addrs))
    });
    // The same number of lookups in a scattered order (cache-unfriendly, as parallel walks are).
    let mut scattered = addrs.clone();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..scattered.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        scattered.swap(i, (x % (i as u64 + 1)) as usize);
    }
    g.bench_function("lookup_every_insn_scattered", |b| {
        b.iter(|| lookup_all(&scattered))
    });
    // Comparison: every validated function's entry against the entry state.
    let entries: Vec<(u64, (u64, u64))> = inp
        .graph
        .funcs
        .iter()
        .filter(|f| f.skip.is_none())
        .filter_map(|f| {
            let s = inp
                .sections
                .iter()
                .find(|s| f.addr >= s.0 && f.addr < s.1)?;
            Some((f.addr, *s))
        })
        .collect();
    let init = Cfi::initial();
    g.throughput(Throughput::Elements(entries.len() as u64));
    g.bench_function("verify_function_entries", |b| {
        b.iter(|| {
            let mut confirmed = 0usize;
            for &(addr, sec) in &entries {
                if matches!(
                    check::orc::verify(orc, addr, sec, &init),
                    check::orc::Verdict::Confirmed
                ) {
                    confirmed += 1;
                }
            }
            assert_eq!(confirmed, entries.len(), "every entry confirmed");
            black_box(confirmed)
        })
    });
    g.finish();
}

fn hot_paths(c: &mut Criterion) {
    let inp = inputs();
    decoding(c, inp);
    tables_and_graph(c, inp);
    walk(c, inp);
    orc(c, inp);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = hot_paths
}
criterion_main!(benches);
