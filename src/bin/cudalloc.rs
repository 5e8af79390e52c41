//! The `cudalloc` command-line tool.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cudalloc::{CachingAllocator, Config, SimBackend};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let res = match cli.cmd {
        Cmd::Demo {
            conf,
            capacity_gib,
            steps,
        } => demo(conf, capacity_gib, steps),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cudalloc: {e}");
            ExitCode::FAILURE
        }
    }
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
