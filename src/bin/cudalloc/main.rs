//! The `cudalloc` command-line tool.

mod markdown;
mod min_capacity;
mod output;
mod plot;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use cudalloc::reference::{default_python, replay_pytorch};
use cudalloc::replay::{ReplayOptions, replay_device, script, starts_warm};
use cudalloc::trace::read_trace;
use cudalloc::units::parse_size;
use cudalloc::{CachingAllocator, Config, SimBackend};
use indicatif::{ProgressBar, ProgressStyle};
use output::{conf_label, json_line, print_ranking, print_table};

#[derive(Parser)]
#[command(
    name = "cudalloc",
    version,
    about = "A caching CUDA device-memory allocator"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Replay allocation traces (PyTorch memory snapshots, the project's CSV, RMM logs) on a
    /// simulated device and compare what cudalloc reserves with what PyTorch reserved.
    Replay(ReplayArgs),
    /// Read PyTorch's "CUDA out of memory" message (as arguments, or on standard input) and
    /// tell a real shortage (cut N MiB) from fragmentation (a setting helps). Prints
    /// `verdict: shortage|fragmentation|unknown` first.
    Explain {
        /// The message (quoted, or as several words); none or `-`: read standard input.
        message: Vec<String>,
        /// One JSON object (`verdict`, `short_by_bytes`, the figures read).
        #[arg(long)]
        json: bool,
    },
    /// Write the stand-in CUDA (a libcudart.so.13, libcuda.so.1 and libnvidia-ml.so.1 over
    /// one device with no compute) into a folder and print the LD_PRELOAD line that runs the
    /// PyTorch CUDA wheel on it, on a machine with no GPU.
    Standin {
        /// The folder (default: one in the system's temporary directory).
        dir: Option<PathBuf>,
    },
    /// Run a short training-like workload on a simulated device and print the memory
    /// summary.
    Demo {
        /// Allocator configuration (PYTORCH_CUDA_ALLOC_CONF syntax); default: CUDALLOC_CONF.
        #[arg(long)]
        conf: Option<String>,
        /// Simulated device capacity in GiB.
        #[arg(long, default_value_t = 16)]
        capacity_gib: u64,
        /// Training steps.
        #[arg(long, default_value_t = 20)]
        steps: u32,
    },
}

#[derive(Args)]
struct ReplayArgs {
    /// Trace files.
    #[arg(required = true)]
    traces: Vec<PathBuf>,
    /// Replay only this device of each trace (default: every device with events).
    #[arg(long)]
    device: Option<usize>,
    /// Allocator configuration (CUDALLOC_CONF syntax); repeat to compare several side by
    /// side. Default: the settings recorded in the snapshot, else cudalloc's defaults.
    #[arg(long = "conf")]
    confs: Vec<String>,
    /// Simulated device capacity with its unit (e.g. 80GiB); default: the trace's device,
    /// else 80GiB.
    #[arg(long, value_parser = capacity_arg)]
    capacity: Option<u64>,
    /// One JSON object per trace, device and configuration, instead of the table.
    #[arg(long)]
    json: bool,
    /// Write cudalloc's state and event history after the replay as a PyTorch snapshot
    /// pickle (several replays: numbered files).
    #[arg(long)]
    dump_snapshot: Option<PathBuf>,
    /// Plot reserved and live bytes over the trace, cudalloc beside PyTorch, as SVG
    /// (several replays: numbered files).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Do not replay the program's empty_cache calls (by default cudalloc empties its
    /// cache where the snapshot shows PyTorch releasing segments).
    #[arg(long)]
    no_empty_cache: bool,
    /// Start from an empty cache instead of the segments PyTorch held when the snapshot
    /// began (fixed segments only; expandable segments always start empty).
    #[arg(long)]
    cold_start: bool,
    /// Replay each setting twice where that differs: from the snapshot's cache and from an
    /// empty one (expandable segments, and traces with no cache at the start, once).
    #[arg(long, conflicts_with = "cold_start")]
    both_starts: bool,
    /// Print every replay of the run as one Markdown table, then a summary per setting and
    /// start (geometric means against PyTorch and the lower bound, the traces where cudalloc
    /// reserves more, device allocation calls): the README's results table.
    #[arg(long, conflicts_with = "json")]
    markdown: bool,
    /// Also print cudalloc's memory summary at the moment of its peak reserved memory: what
    /// it held then and how much of it was cached but free.
    #[arg(long)]
    summary_at_peak: bool,
    /// Replay with the settings users reach for against out-of-memory errors (the trace's
    /// own, expandable segments, max_split_size_mb 128/256/512, roundup_power2_divisions 4)
    /// and rank them by peak reserved memory.
    #[arg(long, conflicts_with = "confs")]
    suggest: bool,
    /// Also replay the same events, settings and capacity through another allocator:
    /// `pytorch` is PyTorch's own caching allocator (the torch that --python imports, run on
    /// the stand-in CUDA in a child process).
    #[arg(long, value_enum)]
    reference: Option<Engine>,
    /// The Python whose torch --reference pytorch uses (default: CUDALLOC_PYTHON, else
    /// python3).
    #[arg(long, requires = "reference")]
    python: Option<PathBuf>,
    /// Also find, by bisection in 2 MiB steps, the smallest device capacity at which
    /// cudalloc replays each trace without running out of memory and, with --reference
    /// pytorch, the smallest at which PyTorch's allocator does; then replay each at the
    /// other's. (Many replays: with --reference, a PyTorch child for each.)
    #[arg(long, conflicts_with = "markdown")]
    min_capacity: bool,
}

/// Reference allocators for `--reference`.
#[derive(Clone, Copy, ValueEnum)]
enum Engine {
    /// PyTorch's CUDACachingAllocator.
    Pytorch,
}

/// The settings `--suggest` compares (beside the trace's own).
const SUGGESTED: [&str; 5] = [
    "expandable_segments:True",
    "max_split_size_mb:128",
    "max_split_size_mb:256",
    "max_split_size_mb:512",
    "roundup_power2_divisions:4",
];

/// `--capacity`: a size with a unit (a bare number is refused: 200 bytes is never meant).
fn capacity_arg(s: &str) -> Result<u64, String> {
    if s.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "'{s}' has no unit: write it with one, e.g. {s}GiB or {s}MiB"
        ));
    }
    parse_size(s)
}

/// `PATH` for the first output, `PATH-2.ext`, `PATH-3.ext`... for the next ones.
fn numbered(path: &Path, k: usize) -> PathBuf {
    if k == 0 {
        return path.to_path_buf();
    }
    let stem = path
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into());
    let name = match path.extension() {
        Some(e) => format!("{stem}-{}.{}", k + 1, e.to_string_lossy()),
        None => format!("{stem}-{}", k + 1),
    };
    path.with_file_name(name)
}

/// Replay every trace; `Ok(true)` when some replay ran out of memory (with `--suggest`: when
/// every setting did), which the exit status reports.
fn replay(args: ReplayArgs) -> Result<bool, Box<dyn std::error::Error>> {
    if let Some(p) = &args.plot {
        plot::check_extension(p)?;
    }
    let mut configs: Vec<Option<Config>> = Vec::new();
    for c in &args.confs {
        configs.push(Some(Config::parse_from("--conf", c)?));
    }
    if configs.is_empty() {
        configs.push(None);
    }
    if args.suggest {
        for c in SUGGESTED {
            configs.push(Some(Config::parse(c)?));
        }
    }
    let mut k = 0;
    let mut any_oom = false;
    let mut rows: Vec<markdown::Row> = Vec::new();
    let starts: &[bool] = if args.both_starts {
        &[false, true]
    } else if args.cold_start {
        &[true]
    } else {
        &[false]
    };
    for path in &args.traces {
        let mut trace = read_trace(path, None)?;
        // A device with nothing to replay is no device of the trace's (a header-only CSV is
        // then the same as an empty snapshot: no events).
        trace
            .devices
            .retain(|x| !x.events.is_empty() || !x.initial_live.is_empty());
        if let Some(d) = args.device {
            let with: Vec<String> = trace.devices.iter().map(|x| x.device.to_string()).collect();
            trace.devices.retain(|x| x.device == d);
            if trace.devices.is_empty() {
                return Err(format!(
                    "{}: device {d} has no events (devices with events: {})",
                    path.display(),
                    if with.is_empty() {
                        "none".to_string()
                    } else {
                        with.join(", ")
                    }
                )
                .into());
            }
        }
        if trace.devices.is_empty() {
            return Err(format!("{}: no events", path.display()).into());
        }
        for dev in &trace.devices {
            let mut reports = Vec::new();
            let mut fits = Vec::new();
            let mut seen = Vec::new();
            for (cfg, &cold) in configs
                .iter()
                .flat_map(|c| starts.iter().map(move |s| (c, s)))
            {
                let opts = ReplayOptions {
                    config: cfg.clone(),
                    capacity: args.capacity,
                    series_points: if args.plot.is_some() { 2000 } else { 0 },
                    record_history: args.dump_snapshot.is_some(),
                    ignore_empty_cache: args.no_empty_cache,
                    cold_start: cold,
                    summary_at_peak: args.summary_at_peak,
                };
                let warm = starts_warm(dev, &opts);
                // --suggest: a setting equal to the trace's own is replayed once. The
                // defaults and expandable_segments:True are two settings: cudalloc's
                // defaults are expandable segments, PyTorch's are not.
                let resolved = (opts.config_for(dev).to_string(), warm);
                if seen.contains(&resolved) {
                    continue;
                }
                seen.push(resolved);
                let total = (dev.initial_live.len() + dev.events.len()) as u64;
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} events ({eta})")
                        .expect("valid template")
                        .progress_chars("=> "),
                );
                bar.set_message(format!(
                    "replaying {}",
                    path.file_name().unwrap_or_default().to_string_lossy()
                ));
                let mut r = replay_device(&trace, dev, &opts, |n| bar.set_position(n))
                    .map_err(|e| format!("{}: device {}: {e}", path.display(), dev.device))?;
                let python = args.reference.is_some().then(|| {
                    args.python
                        .as_ref()
                        .map_or_else(default_python, |p| p.as_os_str().to_owned())
                });
                if let Some(python) = &python {
                    bar.set_message("PyTorch's allocator on the same events");
                    let config = opts.config_for(dev);
                    let ops = script(dev, &opts, &config);
                    r.reference = Some(replay_pytorch(
                        &ops,
                        &config,
                        opts.capacity_for(dev),
                        python,
                    )?);
                }
                let fit = if args.min_capacity {
                    bar.set_message("searching the smallest capacity without OOM");
                    Some(min_capacity::search(
                        &trace,
                        dev,
                        &opts,
                        &r,
                        python.as_deref(),
                    )?)
                } else {
                    None
                };
                bar.finish_and_clear();
                for n in &r.notes {
                    eprintln!("cudalloc: {}: {n}", r.trace);
                }
                if let (Some(p), Some(bytes)) = (&args.dump_snapshot, &r.snapshot) {
                    let out = numbered(p, k);
                    std::fs::write(&out, bytes)
                        .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
                    eprintln!("cudalloc: snapshot written to {}", out.display());
                }
                if let Some(p) = &args.plot {
                    let out = plot::path_for(p, k, conf_label(&r));
                    plot::write(&out, &r, conf_label(&r))
                        .map_err(|e| format!("cannot write the plot {}: {e}", out.display()))?;
                    eprintln!("cudalloc: plot written to {}", out.display());
                }
                k += 1;
                if args.json {
                    println!("{}", json_line(&r, fit.as_ref().map(min_capacity::json)));
                }
                if let Some(f) = fit {
                    fits.push((conf_label(&r).to_string(), warm, f));
                }
                if args.markdown {
                    rows.push(markdown::Row {
                        report: r.clone(),
                        start: if warm { "warm" } else { "cold" },
                    });
                }
                reports.push(r);
            }
            let oom = if args.suggest {
                reports.iter().all(|r| r.ooms > 0)
            } else {
                reports.iter().any(|r| r.ooms > 0)
            };
            any_oom |= oom;
            if !args.json && !args.markdown {
                print_table(&reports);
                if args.suggest {
                    print_ranking(&reports);
                }
                for (label, warm, f) in &fits {
                    println!("{label} ({} start):", if *warm { "warm" } else { "cold" });
                    min_capacity::print(f);
                }
            }
        }
    }
    if args.markdown {
        markdown::print(&rows);
    }
    Ok(any_oom)
}

/// Exit status of a replay in which allocations ran out of memory (1 is an error).
const EXIT_OOM: u8 = 2;

fn main() -> ExitCode {
    // Like other Unix tools, stop quietly when the reader of stdout goes away
    // (`cudalloc replay --json … | head -1`) instead of panicking on the failed write.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let res: Result<bool, Box<dyn std::error::Error>> = match cli.cmd {
        Cmd::Replay(args) => replay(args),
        Cmd::Standin { dir } => standin(dir).map(|()| false),
        Cmd::Explain { message, json } => explain(message, json).map(|()| false),
        Cmd::Demo {
            conf,
            capacity_gib,
            steps,
        } => demo(conf, capacity_gib, steps)
            .map(|()| false)
            .map_err(Into::into),
    };
    match res {
        Ok(false) => ExitCode::SUCCESS,
        Ok(true) => ExitCode::from(EXIT_OOM),
        Err(e) => {
            eprintln!("cudalloc: {e}");
            ExitCode::FAILURE
        }
    }
}

fn explain(message: Vec<String>, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    let text = if message.is_empty() || message == ["-"] {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin().lock(), &mut s)?;
        s
    } else {
        message.join(" ")
    };
    let e = cudalloc::explain::explain_text(&text)?;
    if json {
        println!("{}", e.to_json());
    } else {
        print!("{}", e.render());
    }
    Ok(())
}

fn standin(dir: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    use cudalloc::standin::Standin;
    let s = match dir {
        Some(d) => Standin::install(&d)?,
        None => Standin::in_temp_dir()?,
    };
    println!("LD_PRELOAD={}", s.preload().to_string_lossy());
    eprintln!(
        "cudalloc: stand-in CUDA written to {}; set CUDALLOC_STANDIN_CAPACITY (e.g. 24GiB, \
         default 1GiB) for the device's memory",
        s.dir().display()
    );
    Ok(())
}

fn config(conf: Option<String>) -> Result<Config, cudalloc::Error> {
    match conf {
        Some(s) => Ok(Config::parse_from("--conf", &s)?),
        None => {
            let (cfg, notes) = Config::from_env()?;
            for n in notes {
                eprintln!("{n}");
            }
            Ok(cfg)
        }
    }
}

/// A toy transformer-like step: persistent weights and optimizer state, then per step
/// activations of a few shapes, gradients, and frees in reverse order.
fn demo(conf: Option<String>, capacity_gib: u64, steps: u32) -> Result<(), cudalloc::Error> {
    let cfg = config(conf)?;
    let backend = SimBackend::new(capacity_gib << 30).auto_complete();
    let alloc = CachingAllocator::new(backend, cfg)?;
    let stream = 0;
    let layers = 12u64;
    let hidden = 768u64;
    let mut weights = Vec::new();
    for _ in 0..layers {
        for size in [
            hidden * hidden * 4 * 4,
            hidden * hidden * 4 * 3,
            hidden * 4 * 6,
        ] {
            weights.push(alloc.malloc(size, stream)?);
            weights.push(alloc.malloc(size, stream)?); // optimizer state
        }
    }
    for step in 0..steps as u64 {
        let seq = 128 + (step % 4) * 64;
        let mut acts = Vec::new();
        for _ in 0..layers {
            acts.push(alloc.malloc(seq * hidden * 4 * 4, stream)?);
            acts.push(alloc.malloc(seq * seq * 12 * 4, stream)?);
            acts.push(alloc.malloc(seq * hidden * 4, stream)?);
            let tmp = alloc.malloc(seq * 4 + 100, stream)?;
            drop(tmp);
        }
        let mut grads = Vec::new();
        while let Some(a) = acts.pop() {
            grads.push(alloc.malloc(a.size() / 2 + 512, stream)?);
            drop(a);
        }
        drop(grads);
    }
    println!("{}", alloc.memory_summary(0)?);
    let s = alloc.memory_stats(0)?;
    println!(
        "steps: {steps}; peak allocated {} MiB, peak reserved {} MiB, device allocations {}",
        s.blocks.allocated_bytes[0].peak >> 20,
        s.segments.reserved_bytes[0].peak >> 20,
        s.num_device_alloc
    );
    drop(weights);
    Ok(())
}
