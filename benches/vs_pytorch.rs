//! `cargo bench --bench vs_pytorch`: cudalloc against PyTorch's own caching allocator, in one
//! process, on the same size mixes (`hotpath`: the small-pool sizes of the shipped GPT-2
//! trace; `large`: its sizes of 1 MiB and more), cached malloc+free pairs:
//!
//! - PyTorch 2.15's `c10::cuda::CUDACachingAllocator::raw_alloc_with_stream` / `raw_delete`,
//!   called from native code (`benches/vs_pytorch/torch_alloc.cpp`, compiled here against the
//!   headers and libraries of the torch wheel) on the stand-in CUDA;
//! - cudalloc's C ABI (`cudalloc_malloc` / `cudalloc_free` of `libcudalloc.so`, what the
//!   PyTorch plug-in calls), on its simulated backend;
//! - cudalloc's Rust API (RAII allocations), on its simulated backend;
//!
//! then 1 and 2 threads, each on its own stream, for each. Rounds interleave the allocators;
//! each measurement lasts about 20 ms (100 ms for the threads group) at the allocator's own
//! speed; each figure is the median over the rounds, and the ratios are printed (for
//! threads, the median of each round's own ratio).
//!
//! Last, the LD_PRELOAD shim's pair cost (`preload`): `cuMemAlloc_v2`/`cuMemFree_v2` pairs
//! through its hooks against the same calls straight into the stand-in driver, in one C
//! process (`benches/vs_pytorch/shim_pairs.c`) with the shim preloaded. The stand-in's own
//! calls only book address space, so they are a floor, not a real driver's cost.
//!
//! The torch wheel is found like the real-PyTorch tests find it (`CUDALLOC_PYTHON`, else
//! `.venv/bin/python`, else `python3`); without it the benchmark prints one line and stops.
//! The process re-runs itself with the stand-in CUDA preloaded, which PyTorch's libraries
//! need to start.

use std::ffi::{CString, c_char, c_int, c_void};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use cudalloc::standin::Standin;
use cudalloc::{CachingAllocator, Config, SimBackend};

mod sizes {
    include!("sizes.rs");
}

const CHILD: &str = "CUDALLOC_VS_PYTORCH_CHILD";
const ROUNDS: usize = 15;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn main() -> ExitCode {
    // `cargo bench -- FILTER`: run only if the filter names this group.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if !filter.is_empty() && !filter.iter().any(|f| "vs_pytorch".contains(f.as_str())) {
        return ExitCode::SUCCESS;
    }
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    match prepare() {
        Ok((mut cmd, shim)) => match cmd.status() {
            Ok(s) if s.success() => shim_pairs(&shim),
            Ok(s) => {
                eprintln!("vs_pytorch: the benchmark process failed ({s})");
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("vs_pytorch: cannot rerun the benchmark: {e}");
                ExitCode::FAILURE
            }
        },
        Err(why) => {
            println!("vs_pytorch: SKIPPED: {why}");
            ExitCode::SUCCESS
        }
    }
}

/// What the preload measurement needs: its C harness, the shim, the stand-in.
struct ShimBench {
    exe: PathBuf,
    shim: PathBuf,
    standin: Standin,
}

/// Find torch, build the harnesses, the C library and the shim, and return the command that
/// reruns this benchmark with everything in place.
fn prepare() -> Result<(Command, ShimBench), String> {
    let python = PathBuf::from(cudalloc::reference::project_python(root()));
    let out = Command::new(&python)
        .args([
            "-c",
            "import os, torch; assert torch.version.cuda; print(os.path.dirname(torch.__file__)); \
             print(torch.__version__)",
        ])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} has no CUDA torch (scripts/install-torch.sh installs it, or set CUDALLOC_PYTHON)",
            python.display()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let torch_dir = PathBuf::from(lines.next().unwrap_or_default());
    let torch_version = lines.next().unwrap_or("unknown").to_string();
    let site = torch_dir.parent().unwrap_or(&torch_dir).to_path_buf();

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("vs_pytorch");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let harness = dir.join("libtorch_alloc.so");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let built = Command::new(&cxx)
        .args(["-O2", "-std=c++20", "-shared", "-fPIC", "-o"])
        .arg(&harness)
        .arg(root().join("benches/vs_pytorch/torch_alloc.cpp"))
        .arg(format!("-I{}", torch_dir.join("include").display()))
        .arg(format!("-I{}", site.join("nvidia/cu13/include").display()))
        .arg(format!("-L{}", torch_dir.join("lib").display()))
        .args(["-lc10_cuda", "-lc10"])
        .arg(format!("-Wl,-rpath,{}", torch_dir.join("lib").display()))
        .output()
        .map_err(|e| format!("cannot run the C++ compiler {cxx}: {e}"))?;
    if !built.status.success() {
        let err = String::from_utf8_lossy(&built.stderr);
        return Err(format!(
            "compiling the PyTorch harness failed (nvidia-cuda-crt missing? \
             scripts/install-torch.sh installs it): {}",
            err.lines().find(|l| l.contains("error")).unwrap_or("")
        ));
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let ok = Command::new(cargo)
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "cudalloc-capi",
            "-p",
            "cudalloc-preload",
        ])
        .current_dir(root())
        .status()
        .map_err(|e| e.to_string())?;
    if !ok.success() {
        return Err("building libcudalloc.so or the preload shim failed".into());
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let capi = target.join("release/libcudalloc.so");
    let standin = Standin::in_temp_dir().map_err(|e| e.to_string())?;
    let shim_exe = dir.join("shim_pairs");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-O2", "-Wall", "-o"])
        .arg(&shim_exe)
        .arg(root().join("benches/vs_pytorch/shim_pairs.c"))
        .arg(format!("-I{}", root().join("tests/fixtures").display()))
        .arg("-L")
        .arg(standin.dir())
        .args(["-lcuda", "-ldl"])
        .output()
        .map_err(|e| format!("cannot run the C compiler {cc}: {e}"))?;
    if !built.status.success() {
        return Err(format!(
            "compiling the shim harness failed: {}",
            String::from_utf8_lossy(&built.stderr)
        ));
    }
    let shim = ShimBench {
        exe: shim_exe,
        shim: target.join("release/libcudalloc_preload.so"),
        standin,
    };

    let mut cmd = Command::new(std::env::current_exe().map_err(|e| e.to_string())?);
    cmd.args(std::env::args().skip(1))
        .env(CHILD, "1")
        .env("LD_PRELOAD", shim.standin.preload())
        .env("CUDALLOC_STANDIN_CAPACITY", "64GiB")
        .env("VS_PYTORCH_HARNESS", &harness)
        .env("VS_PYTORCH_CAPI", &capi)
        .env("VS_PYTORCH_TORCH_VERSION", torch_version)
        .env("CUDALLOC_BACKEND", "sim")
        .env("CUDALLOC_SIM_CAPACITY", "64GiB")
        .env_remove("CUDALLOC_CONF")
        .env_remove("PYTORCH_CUDA_ALLOC_CONF");
    Ok((cmd, shim))
}

/// The preload shim's pair cost against the stand-in driver's own, on both mixes.
fn shim_pairs(b: &ShimBench) -> ExitCode {
    println!(
        "vs_pytorch/preload: cuMemAlloc_v2/cuMemFree_v2 pairs through the LD_PRELOAD shim \
         against the stand-in driver's own calls (which only book address space), medians of \
         {ROUNDS} interleaved rounds"
    );
    for (group, small) in [("hotpath", true), ("large", false)] {
        let (sizes, _) = sizes::mix(small);
        let list = b.exe.with_extension(format!("{group}.txt"));
        let text: String = sizes.iter().map(|s| format!("{s}\n")).collect();
        if let Err(e) = std::fs::write(&list, text) {
            eprintln!("vs_pytorch: cannot write {}: {e}", list.display());
            return ExitCode::FAILURE;
        }
        let out = Command::new(&b.exe)
            .arg(&list)
            .arg(ROUNDS.to_string())
            .env("LD_LIBRARY_PATH", b.standin.dir())
            .env("LD_PRELOAD", &b.shim)
            .env("CUDALLOC_STANDIN_CAPACITY", "64GiB")
            .env_remove("CUDALLOC_CONF")
            .output();
        let out = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
            Ok(o) => {
                eprintln!(
                    "vs_pytorch: the shim harness failed ({}): {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr)
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("vs_pytorch: cannot run the shim harness: {e}");
                return ExitCode::FAILURE;
            }
        };
        let figure = |key: &str| -> Option<f64> {
            out.lines()
                .find_map(|l| l.strip_prefix(key)?.trim().parse().ok())
        };
        let (Some(raw), Some(shim)) = (figure("raw "), figure("shim ")) else {
            eprintln!("vs_pytorch: the shim harness printed no figures: {out}");
            return ExitCode::FAILURE;
        };
        println!(
            "  {group:<8} stand-in driver {raw:>8.1} ns/pair  shim {shim:>8.1} ns/pair  \
             ({:.2}x the stand-in's speed, {} pairs per pass)",
            raw / shim,
            sizes.len()
        );
    }
    ExitCode::SUCCESS
}

/// A library opened with `dlopen`, and its functions.
struct Lib(*mut c_void);

impl Lib {
    fn open(path: &str) -> Lib {
        let c = CString::new(path).unwrap();
        // SAFETY: dlopen with a valid C string; the handle is checked below.
        let h = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if h.is_null() {
            // SAFETY: dlerror returns a valid C string after a failed dlopen.
            let e = unsafe { std::ffi::CStr::from_ptr(libc::dlerror()) };
            panic!("cannot load {path}: {}", e.to_string_lossy());
        }
        Lib(h)
    }

    fn sym(&self, name: &str) -> *mut c_void {
        let c = CString::new(name).unwrap();
        // SAFETY: dlsym on a live handle with a valid C string.
        let f = unsafe { libc::dlsym(self.0, c.as_ptr()) };
        assert!(!f.is_null(), "{name} is missing");
        f
    }
}

type MallocFn = unsafe extern "C" fn(usize, *mut c_void) -> *mut c_void;
type FreeFn = unsafe extern "C" fn(*mut c_void);
type CMallocFn = unsafe extern "C" fn(isize, c_int, *mut c_void) -> *mut c_void;
type CFreeFn = unsafe extern "C" fn(*mut c_void, isize, c_int, *mut c_void);

/// One allocator under test: a pass over the size mix on a stream.
trait Engine: Sync {
    fn pass(&self, sizes: &[u64], stream: usize);
    /// A stream of its own for thread `i` (0: the default stream).
    fn stream(&self, i: usize) -> usize;
}

struct Torch {
    malloc: MallocFn,
    free: FreeFn,
    streams: Vec<usize>,
}

impl Engine for Torch {
    fn pass(&self, sizes: &[u64], stream: usize) {
        for &s in sizes {
            // SAFETY: the harness's functions take any size and a stream of the device; the
            // pointer is freed at once and never dereferenced.
            unsafe {
                let p = (self.malloc)(s as usize, stream as *mut c_void);
                assert!(!p.is_null(), "PyTorch's allocator failed");
                (self.free)(black_box(p));
            }
        }
    }
    fn stream(&self, i: usize) -> usize {
        self.streams[i]
    }
}

struct CAbi {
    malloc: CMallocFn,
    free: CFreeFn,
}

impl Engine for CAbi {
    fn pass(&self, sizes: &[u64], stream: usize) {
        for &s in sizes {
            // SAFETY: cudalloc_malloc/free as the header declares them; the pointer is freed
            // at once, with its size, device and stream, and never dereferenced.
            unsafe {
                let p = (self.malloc)(s as isize, 0, stream as *mut c_void);
                assert!(!p.is_null(), "cudalloc_malloc failed");
                (self.free)(black_box(p), s as isize, 0, stream as *mut c_void);
            }
        }
    }
    fn stream(&self, i: usize) -> usize {
        i
    }
}

struct RustApi {
    alloc: CachingAllocator<SimBackend>,
    streams: Vec<usize>,
}

impl Engine for RustApi {
    fn pass(&self, sizes: &[u64], stream: usize) {
        for &s in sizes {
            let a = self.alloc.malloc(s, stream as u64).expect("cached malloc");
            black_box(a.ptr());
        }
    }
    fn stream(&self, i: usize) -> usize {
        self.streams[i]
    }
}

/// Nanoseconds per pair for `threads` threads each doing `reps` passes on its own stream
/// (for several threads: wall time over all their pairs, so lower is more throughput).
///
/// The threads start together: each spins until all have arrived (a sleeping barrier's
/// wake-up on this VM could come milliseconds late, and the threads' passes then
/// overlapped only in part), then reads the clock itself; the span is from the first start
/// to the last end. (The main thread used to read the clock after a barrier released the
/// workers: woken late, it found a worker's passes already done, a 3-pass probe measured
/// almost nothing, and the repetition count made from it turned a 100 ms measurement into
/// minutes.)
fn timed(e: &dyn Engine, sizes: &[u64], threads: usize, reps: usize) -> f64 {
    let arrived = AtomicUsize::new(0);
    let spans: Vec<(Instant, Instant)> = std::thread::scope(|sc| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (arrived, stream) = (&arrived, e.stream(t));
                sc.spawn(move || {
                    arrived.fetch_add(1, Ordering::SeqCst);
                    while arrived.load(Ordering::SeqCst) < threads {
                        std::hint::spin_loop();
                    }
                    let start = Instant::now();
                    for _ in 0..reps {
                        e.pass(sizes, stream);
                    }
                    (start, Instant::now())
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("bench thread"))
            .collect()
    });
    let start = spans
        .iter()
        .map(|s| s.0)
        .min()
        .expect("one thread at least");
    let end = spans
        .iter()
        .map(|s| s.1)
        .max()
        .expect("one thread at least");
    (end - start).as_nanos() as f64 / (reps * sizes.len() * threads) as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Medians over interleaved rounds (the allocators' order rotates every round).
/// `window_ns`: about how long one measurement of the slowest allocator lasts.
fn compare(
    engines: &[(&str, &dyn Engine)],
    sizes: &[u64],
    threads: usize,
    window_ns: f64,
) -> Vec<f64> {
    for (_, e) in engines {
        for t in 0..threads {
            e.pass(sizes, e.stream(t)); // warm the caches on every stream
        }
    }
    // About `window_ns` a measurement, for each allocator at its own speed (with one count
    // for all, the fastest measured for a few milliseconds only).
    let reps: Vec<usize> = engines
        .iter()
        .map(|(_, e)| {
            let probe = timed(*e, sizes, threads, 3);
            ((window_ns / (probe * (sizes.len() * threads) as f64)) as usize).max(3)
        })
        .collect();
    let mut samples = vec![Vec::new(); engines.len()];
    for round in 0..ROUNDS {
        for k in 0..engines.len() {
            let i = (round + k) % engines.len();
            samples[i].push(timed(engines[i].1, sizes, threads, reps[i]));
        }
    }
    samples.into_iter().map(median).collect()
}

fn child() -> ExitCode {
    let harness = Lib::open(&std::env::var("VS_PYTORCH_HARNESS").unwrap());
    let capi = Lib::open(&std::env::var("VS_PYTORCH_CAPI").unwrap());
    let version = std::env::var("VS_PYTORCH_TORCH_VERSION").unwrap_or_default();
    // SAFETY: the harness's functions have exactly these signatures (torch_alloc.cpp), and
    // so do cudalloc's (ffi/include/cudalloc.h).
    let (torch, cabi, name) = unsafe {
        let init: unsafe extern "C" fn() -> c_int =
            std::mem::transmute(harness.sym("torch_alloc_init"));
        if init() != 0 {
            eprintln!("vs_pytorch: PyTorch's allocator did not start on the stand-in");
            return ExitCode::FAILURE;
        }
        let stream: unsafe extern "C" fn() -> *mut c_void =
            std::mem::transmute(harness.sym("torch_alloc_stream"));
        let name: unsafe extern "C" fn() -> *const c_char =
            std::mem::transmute(harness.sym("torch_alloc_name"));
        let torch = Torch {
            malloc: std::mem::transmute::<*mut c_void, MallocFn>(harness.sym("torch_alloc_malloc")),
            free: std::mem::transmute::<*mut c_void, FreeFn>(harness.sym("torch_alloc_free")),
            streams: vec![stream() as usize, stream() as usize],
        };
        let cabi = CAbi {
            malloc: std::mem::transmute::<*mut c_void, CMallocFn>(capi.sym("cudalloc_malloc")),
            free: std::mem::transmute::<*mut c_void, CFreeFn>(capi.sym("cudalloc_free")),
        };
        let name = std::ffi::CStr::from_ptr(name())
            .to_string_lossy()
            .into_owned();
        (torch, cabi, name)
    };
    let backend = SimBackend::new(64 << 30).virtual_only().auto_complete();
    let alloc = CachingAllocator::new(backend, Config::default()).expect("default config");
    let streams = vec![
        alloc.backend().create_stream() as usize,
        alloc.backend().create_stream() as usize,
    ];
    let rust = RustApi { alloc, streams };
    let engines: [(&str, &dyn Engine); 3] = [
        ("PyTorch raw_alloc_with_stream/raw_delete", &torch),
        ("cudalloc C ABI (libcudalloc.so)", &cabi),
        ("cudalloc Rust API", &rust),
    ];
    println!(
        "vs_pytorch: torch {version} ({name} allocator, on the stand-in CUDA) against cudalloc \
         (simulated backend); medians of {ROUNDS} interleaved rounds"
    );
    for (group, small) in [("hotpath", true), ("large", false)] {
        let (sizes, source) = sizes::mix(small);
        println!(
            "vs_pytorch/{group}: {} cached malloc+free pairs per pass, sizes from {source}",
            sizes.len()
        );
        let ns = compare(&engines, &sizes, 1, 20e6);
        for ((label, _), t) in engines.iter().zip(&ns) {
            println!(
                "  {label:<42} {t:>8.1} ns/pair  {:>5.2}x PyTorch's speed",
                ns[0] / t
            );
        }
    }
    let (sizes, _) = sizes::mix(true);
    println!(
        "vs_pytorch/threads: hotpath pairs, each thread on its own stream (pairs per second; \
         the scaling is the median of each round's 2-thread over 1-thread throughput)"
    );
    for ((label, _), (one, two, ratio)) in engines.iter().zip(scaling(&engines, &sizes)) {
        println!(
            "  {label:<42} 1 thread {:>6.1} M/s  2 threads {:>6.1} M/s  ({ratio:.2}x one thread)",
            1e3 / one,
            1e3 / two,
        );
    }
    ExitCode::SUCCESS
}

/// Per engine: median ns per pair with 1 thread and with 2 (wall time over all pairs), and
/// the median over the rounds of the 2-thread throughput over the 1-thread one. Each round
/// measures both back to back (in alternating order), so a drift of the machine's speed
/// between rounds (this VM's moves by half within a second) does not enter the ratio, as it
/// did when all 1-thread rounds ran before all 2-thread ones. Measurements last about
/// 100 ms each.
fn scaling(engines: &[(&str, &dyn Engine)], sizes: &[u64]) -> Vec<(f64, f64, f64)> {
    let reps = |e: &dyn Engine, threads: usize| {
        for t in 0..threads {
            e.pass(sizes, e.stream(t));
        }
        let probe = timed(e, sizes, threads, 3);
        ((100e6 / (probe * (sizes.len() * threads) as f64)) as usize).max(3)
    };
    let counts: Vec<(usize, usize)> = engines
        .iter()
        .map(|(_, e)| (reps(*e, 1), reps(*e, 2)))
        .collect();
    let mut samples = vec![(Vec::new(), Vec::new(), Vec::new()); engines.len()];
    for round in 0..ROUNDS {
        for k in 0..engines.len() {
            let i = (round + k) % engines.len();
            let e = engines[i].1;
            let (r1, r2) = counts[i];
            let (one, two) = if round % 2 == 0 {
                let one = timed(e, sizes, 1, r1);
                (one, timed(e, sizes, 2, r2))
            } else {
                let two = timed(e, sizes, 2, r2);
                (timed(e, sizes, 1, r1), two)
            };
            samples[i].0.push(one);
            samples[i].1.push(two);
            samples[i].2.push(one / two);
        }
    }
    samples
        .into_iter()
        .map(|(a, b, r)| (median(a), median(b), median(r)))
        .collect()
}
