//! PyTorch's own caching allocator as the reference: the operations of a replay
//! ([`crate::replay::script`]: the same events, warm start and `empty_cache` calls) are
//! replayed through `torch`'s allocator in a child Python process, under the same settings
//! (`PYTORCH_CUDA_ALLOC_CONF`) and capacity, on the stand-in CUDA ([`crate::standin`]).
//!
//! This module runs the child and reads its answer; it must not choose or reorder the
//! operations (that is [`crate::replay`]'s job), so both allocators see the same replay.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::config::Config;
use crate::replay::Op;
pub use crate::replay::Reference;
use crate::standin::Standin;

/// The child's program (written here, run with `python -c`).
const REPLAY_PY: &str = include_str!("replay_pytorch.py");

/// Why the reference could not be had. Each message says what is missing and how to get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceError {
    /// The Python interpreter could not be started.
    NoPython(String),
    /// Python runs but has no torch, or a torch without CUDA, or one that does not see the
    /// stand-in device.
    NoTorch(String),
    /// This build carries no stand-in CUDA.
    NoStandin(String),
    /// The child failed otherwise.
    Failed(String),
}

const HOW: &str = "install the CUDA build of PyTorch (`python3 -m venv .venv && \
    .venv/bin/pip install torch==2.15.0`) and pass --python .venv/bin/python or set \
    CUDALLOC_PYTHON";

impl fmt::Display for ReferenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReferenceError::NoPython(m) => write!(f, "--reference pytorch: {m}; {HOW}"),
            ReferenceError::NoTorch(m) => write!(f, "--reference pytorch: {m}; {HOW}"),
            ReferenceError::NoStandin(m) => write!(f, "--reference pytorch: {m}"),
            ReferenceError::Failed(m) => write!(f, "--reference pytorch: {m}"),
        }
    }
}

impl std::error::Error for ReferenceError {}

/// The interpreter to run: `CUDALLOC_PYTHON`, else `python3`.
pub fn default_python() -> OsString {
    std::env::var_os("CUDALLOC_PYTHON")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".into())
}

/// The interpreter a project's tests and benchmarks use: `CUDALLOC_PYTHON`, else the
/// `.venv/bin/python` that `scripts/install-torch.sh` makes under `root`, else `python3`.
pub fn project_python(root: &std::path::Path) -> OsString {
    match std::env::var_os("CUDALLOC_PYTHON").filter(|p| !p.is_empty()) {
        Some(p) => p,
        None => {
            let venv = root.join(".venv/bin/python");
            if venv.exists() {
                venv.into_os_string()
            } else {
                "python3".into()
            }
        }
    }
}

/// `PYTORCH_CUDA_ALLOC_CONF` for a configuration: its keys, with `expandable_segments` always
/// explicit. A configuration that does not name it gets PyTorch's default, fixed segments
/// (cudalloc's own default is expandable segments: the same settings string, each
/// allocator's defaults).
pub fn pytorch_conf(config: &Config) -> String {
    // cudalloc's own keys are not PyTorch's.
    let mut s = Config {
        expandable_min_map: None,
        ..config.clone()
    }
    .to_string();
    // The defaults leave the key out of `to_string`: PyTorch's default must not decide.
    if config.expandable_segments && !config.expandable_segments_set {
        if !s.is_empty() {
            s.push(',');
        }
        s.push_str("expandable_segments:False");
    }
    s
}

/// The script file's bytes: four little-endian u64 words per operation (the format
/// `replay_pytorch.py` documents).
fn encode(ops: &[Op]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ops.len() * 32);
    for op in ops {
        let words = match *op {
            Op::Alloc { addr, size, stream } => [1, addr, size, stream],
            Op::Free { addr } => [2, addr, 0, 0],
            Op::EmptyCache => [3, 0, 0, 0],
            Op::Warm { size, stream } => [4, 0, size, stream],
            Op::WarmDone => [5, 0, 0, 0],
        };
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
}

/// Replay `ops` through PyTorch's allocator under `config` on a stand-in device of
/// `capacity` bytes, with the interpreter `python`.
///
/// # Errors
/// See [`ReferenceError`]: no interpreter, no usable torch, no stand-in, or a failed child.
pub fn replay_pytorch(
    ops: &[Op],
    config: &Config,
    capacity: u64,
    python: &OsStr,
) -> Result<Reference, ReferenceError> {
    let standin = Standin::in_temp_dir().map_err(|e| ReferenceError::NoStandin(e.to_string()))?;
    let file = tempfile::Builder::new()
        .prefix("cudalloc-replay-")
        .suffix(".ops")
        .tempfile()
        .and_then(|mut f| f.write_all(&encode(ops)).map(|()| f))
        .map_err(|e| ReferenceError::Failed(format!("cannot write the replay script: {e}")))?;
    let out = Command::new(python)
        .arg("-c")
        .arg(REPLAY_PY)
        .arg(file.path())
        .env("LD_PRELOAD", standin.preload())
        .env("PYTORCH_CUDA_ALLOC_CONF", pytorch_conf(config))
        .env_remove("PYTORCH_ALLOC_CONF")
        .env_remove("PYTORCH_NO_CUDA_MEMORY_CACHING")
        .env("CUDALLOC_STANDIN_CAPACITY", capacity.to_string())
        .env("CUDALLOC_STANDIN_DEVICES", "1")
        .env("CUDA_VISIBLE_DEVICES", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            ReferenceError::NoPython(format!("cannot run {}: {e}", python.to_string_lossy()))
        })?;
    drop(file);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    let value: Option<serde_json::Value> = line.and_then(|l| serde_json::from_str(l).ok());
    let Some(v) = value else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(ReferenceError::Failed(format!(
            "the PyTorch child ({}) ended with {} and no answer: {}",
            python.to_string_lossy(),
            out.status,
            tail.join(" | ")
        )));
    };
    if let Some(msg) = v.get("error").and_then(|m| m.as_str()) {
        return Err(match out.status.code() {
            Some(3 | 4) => ReferenceError::NoTorch(msg.to_string()),
            _ => ReferenceError::Failed(msg.to_string()),
        });
    }
    let num = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
    match (
        num("peak_reserved"),
        num("device_allocs"),
        num("ooms"),
        num("events"),
    ) {
        (Some(peak_reserved), Some(device_allocs), Some(ooms), Some(events)) => Ok(Reference {
            engine: "pytorch",
            torch_version: v
                .get("torch_version")
                .and_then(|s| s.as_str())
                .unwrap_or("unknown")
                .to_string(),
            peak_reserved,
            device_allocs,
            ooms,
            events,
            seconds: v.get("seconds").and_then(|s| s.as_f64()).unwrap_or(0.0),
        }),
        _ => Err(ReferenceError::Failed(format!(
            "the PyTorch child's answer lacks a figure: {}",
            line.unwrap_or_default()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PyTorch gets its own keys, `expandable_segments` always explicit, and none of
    /// cudalloc's own.
    #[test]
    fn pytorch_gets_its_own_keys_only() {
        let conf = |s: &str| pytorch_conf(&Config::parse(s).unwrap());
        assert_eq!(conf(""), "expandable_segments:False");
        assert_eq!(
            conf("max_split_size_mb:128,expandable_min_map_mb:8"),
            "max_split_size_mb:128,expandable_segments:False"
        );
        assert_eq!(
            conf("expandable_segments:True,expandable_min_map_mb:20"),
            "expandable_segments:True"
        );
    }
}
