//! The `stackval` command: argument parsing and exit codes; the work is in the library.

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use stackval::report::{self, Format};

#[global_allocator]
static ALLOC: stackval::alloc::HugeAlloc = stackval::alloc::HugeAlloc;

#[derive(Parser)]
#[command(
    name = "stackval",
    version,
    about = "Validate the stack metadata of a linked x86-64 Linux kernel image (vmlinux)",
    long_about = "Validate the stack metadata of a linked x86-64 Linux kernel image (vmlinux).\n\n\
        stackval checks the rules of the kernel's stack validation (objtool) on the final image: \
        every function is decoded and walked along every path, with jumps into other files' code \
        followed through one global call graph.\n\n\
        Exit status: 0 no findings, 1 findings, 2 an input could not be checked."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Check one or more images and report every finding.
    Check(CheckArgs),
    /// Decode every executable byte once with iced-x86 and keep nothing: the floor a full
    /// check is measured against (for benchmarks).
    Decode {
        /// Worker threads [default: all cores].
        #[arg(short, long, value_name = "N")]
        jobs: Option<usize>,
        /// The image (vmlinux).
        image: PathBuf,
    },
    /// Show a function's callers, callees, cold parts and whether it returns.
    Graph {
        /// The image (vmlinux).
        image: PathBuf,
        /// Function name (any alias).
        function: String,
    },
}

#[derive(Args)]
struct CheckArgs {
    /// Worker threads [default: all cores].
    #[arg(short, long, value_name = "N")]
    jobs: Option<usize>,
    /// Apply the frame-pointer rules (default when the image has no .orc_unwind section).
    #[arg(long, overrides_with = "no_frame_pointer")]
    frame_pointer: bool,
    /// Do not apply the frame-pointer rules (default when the image has an ORC table).
    #[arg(long, overrides_with = "frame_pointer")]
    no_frame_pointer: bool,
    /// Compare the image's ORC table with the computed stack state (default when it has one).
    #[arg(long, overrides_with = "no_orc")]
    orc: bool,
    /// Do not verify the ORC table.
    #[arg(long, overrides_with = "orc")]
    no_orc: bool,
    /// Print the reliability report after the findings (validated functions, ORC agreement,
    /// skipped functions and why, functions that cannot be certified); JSON with --format json.
    #[arg(long)]
    report: bool,
    /// Functions to skip as non-standard, one `function  reason` per line.
    #[arg(long, value_name = "FILE")]
    allow: Option<PathBuf>,
    /// Print findings only: no summary line.
    #[arg(short, long)]
    quiet: bool,
    /// Never show the progress bar (it only shows when stderr is a terminal).
    #[arg(long)]
    no_progress: bool,
    /// Print each phase's and step's wall and CPU time, its change in anonymous memory, and the
    /// work done, to stderr.
    #[arg(long)]
    time: bool,
    /// Findings are errors: label them `error:` (a build step should fail on exit status 1;
    /// without this flag a kernel build hook treats them as warnings, as objtool's are).
    #[arg(long)]
    werror: bool,
    /// Output format of findings on stdout.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    format: Format,
    /// Kernel images to check.
    #[arg(required = true, value_name = "IMAGE")]
    images: Vec<PathBuf>,
}

fn main() -> ExitCode {
    stackval::alloc::tune_system_allocator();
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Check(args) => check(args),
        Cmd::Decode { jobs, image } => {
            if let Err(e) = rayon::ThreadPoolBuilder::new()
                .num_threads(jobs.unwrap_or(0))
                .build_global()
            {
                eprintln!("stackval: cannot start worker threads: {e}");
                return ExitCode::from(2);
            }
            match stackval::decode_only(&image) {
                Ok((insns, bytes, secs)) => {
                    println!(
                        "{}: {insns} instructions, {bytes} bytes decoded in {secs:.3}s ({:.1} M instructions/s)",
                        image.display(),
                        insns as f64 / secs / 1e6
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("stackval: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Graph { image, function } => match stackval::describe_function(&image, &function) {
            Ok(Some(text)) => {
                let _ = io::stdout().write_all(text.as_bytes());
                ExitCode::SUCCESS
            }
            Ok(None) => {
                eprintln!(
                    "stackval: {}: no function named {function}",
                    image.display()
                );
                ExitCode::from(2)
            }
            Err(e) => {
                eprintln!("stackval: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn check(args: CheckArgs) -> ExitCode {
    stackval::count_memory(args.time);
    let jobs = args.jobs.unwrap_or(0);
    if let Err(e) = rayon::ThreadPoolBuilder::new()
        .num_threads(jobs)
        .build_global()
    {
        eprintln!("stackval: cannot start worker threads: {e}");
        return ExitCode::from(2);
    }
    if let Some(path) = &args.allow {
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|t| stackval::known::parse_allow(&t));
        match parsed {
            Ok(entries) => stackval::known::set_allow(entries),
            Err(e) => {
                eprintln!("stackval: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        }
    }
    let frame_pointer = match (args.frame_pointer, args.no_frame_pointer) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let verify_orc = match (args.orc, args.no_orc) {
        (true, _) => Some(true),
        (_, true) => Some(false),
        _ => None,
    };
    let opts = stackval::Options {
        frame_pointer,
        progress: !args.no_progress && !args.quiet,
        verify_orc,
        report: args.report,
    };
    let mut status = 0u8;
    let stdout = io::stdout();
    for path in &args.images {
        let checked = match stackval::check_image(path, &opts) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("stackval: {e}");
                status = 2;
                continue;
            }
        };
        if let Err(e) = report::print(
            &mut stdout.lock(),
            &checked.diagnostics,
            args.format,
            args.werror,
        ) {
            if e.kind() == io::ErrorKind::BrokenPipe {
                return ExitCode::from(status.max(u8::from(!checked.diagnostics.is_empty())));
            }
            eprintln!("stackval: writing output: {e}");
            return ExitCode::from(2);
        }
        if let Some(r) = &checked.reliability {
            let text = match args.format {
                Format::Text => r.text(),
                Format::Json => serde_json::to_string(r).unwrap_or_default() + "\n",
            };
            if let Err(e) = stdout.lock().write_all(text.as_bytes()) {
                if e.kind() == io::ErrorKind::BrokenPipe {
                    return ExitCode::from(status);
                }
            }
        }
        let s = &checked.stats;
        if let Some(o) = s.orc_verified.as_ref().filter(|_| !args.quiet) {
            let checked = o.confirmed + o.mismatched;
            eprintln!(
                "stackval: orc: {} of {} instructions confirmed ({:.3}%), {} mismatched, {} uncovered, {} undefined, {} regs hints, {} in alternative groups",
                o.confirmed,
                checked,
                100.0 * o.confirmed as f64 / checked.max(1) as f64,
                o.mismatched,
                o.uncovered,
                o.undefined,
                o.regs_hints,
                o.alt_group
            );
        }
        if args.time {
            eprintln!(
                "stackval: time: work: {:.1} MB of code, {} instructions walked, {} noreturn rounds, {} switch tables",
                s.text_bytes as f64 / (1 << 20) as f64,
                s.insns_visited,
                s.noreturn_rounds,
                s.switch_tables
            );
            // Wall time, then the process's CPU time over it: cpu/wall is the cores in use.
            let ms = |t: &stackval::Timing| {
                let (wall, cpu) = (t.wall.as_secs_f64() * 1e3, t.cpu.as_secs_f64() * 1e3);
                let mem = t.anon_kib as f64 / 1024.0;
                format!("{wall:>9.3} ms  cpu {cpu:>8.1} ms  mem {mem:>+7.1} MB")
            };
            for phase in &s.phases {
                eprintln!("stackval: time: {:<9} {}", phase.name, ms(phase));
                let prefix = format!("{}: ", phase.name);
                for step in s.steps.iter().filter(|t| t.name.starts_with(&prefix)) {
                    eprintln!(
                        "stackval: time:   {:<22} {}",
                        &step.name[prefix.len()..],
                        ms(step)
                    );
                }
            }
        }
        if !args.quiet {
            let counts = report::counts(&checked.diagnostics);
            let by_kind: Vec<String> = counts
                .iter()
                .map(|(k, n)| format!("{n} {}", k.id()))
                .collect();
            eprintln!(
                "stackval: {}: {} functions ({} validated, {} noreturn), {} instructions, {} findings{} in {:.2}s [{}{}{}]",
                path.display(),
                s.functions,
                s.validated,
                s.noreturn,
                s.instructions,
                checked.diagnostics.len(),
                if by_kind.is_empty() { String::new() } else { format!(" ({})", by_kind.join(", ")) },
                s.wall.as_secs_f64(),
                if s.frame_pointer { "frame-pointer" } else { "orc" },
                if s.relocations { ", relocations" } else { "" },
                s.kernel_release.as_deref().map(|r| format!(", {r}")).unwrap_or_default(),
            );
        }
        if !checked.diagnostics.is_empty() {
            status = status.max(1);
        }
    }
    ExitCode::from(status)
}
