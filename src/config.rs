//! Configuration: `CUDALLOC_CONF`, in the syntax and with the keys of PyTorch's
//! `PYTORCH_CUDA_ALLOC_CONF`, also settable from code.
//!
//! PARSING IS BEING WRITTEN (helper); the struct below is the contract the policy uses.

use std::fmt;

/// Number of `roundup_power2_divisions` intervals: 1 MiB, 2 MiB, ... 2^15 MiB and above.
pub const ROUNDUP_POWER2_INTERVALS: usize = 16;

/// The allocator's settings. `Config::default()` is PyTorch's default behaviour.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `max_split_size_mb`, in bytes: blocks at least this large are never split, and a
    /// request below it never takes such a block. `u64::MAX` means unlimited (default).
    pub max_split_size: u64,
    /// `max_non_split_rounding_mb`, in bytes: a request of at least `max_split_size` may take
    /// an oversize cached block at most this much larger. Default 20 MiB.
    pub max_non_split_rounding: u64,
    /// `roundup_power2_divisions`: divisions per power-of-two interval, indexed by
    /// `log2(size in MiB)` clamped to `0..ROUNDUP_POWER2_INTERVALS`. 0 means "off".
    pub roundup_power2_divisions: [u64; ROUNDUP_POWER2_INTERVALS],
    /// `garbage_collection_threshold` in (0, 1); 0.0 means off (default).
    pub garbage_collection_threshold: f64,
    /// `expandable_segments`.
    pub expandable_segments: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_split_size: u64::MAX,
            max_non_split_rounding: 20 << 20,
            roundup_power2_divisions: [0; ROUNDUP_POWER2_INTERVALS],
            garbage_collection_threshold: 0.0,
            expandable_segments: false,
        }
    }
}

/// A configuration error: names the key and the byte position in the string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the configuration came from (`CUDALLOC_CONF`, `PYTORCH_CUDA_ALLOC_CONF`, code).
    pub source: String,
    /// The key concerned, if one could be identified.
    pub key: Option<String>,
    /// Byte offset in the configuration string where the problem starts.
    pub position: usize,
    /// What is wrong and what is accepted.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(k) => write!(
                f,
                "{}: key '{}' at position {}: {}",
                self.source, k, self.position, self.message
            ),
            None => write!(
                f,
                "{} at position {}: {}",
                self.source, self.position, self.message
            ),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Divisions of `roundup_power2_divisions` that apply to a request of `size` bytes.
    pub fn roundup_divisions_for(&self, size: u64) -> u64 {
        let log = 63 - size.max(1).leading_zeros() as usize;
        let idx = log.saturating_sub(20).min(ROUNDUP_POWER2_INTERVALS - 1);
        self.roundup_power2_divisions[idx]
    }
}

impl Config {
    /// Placeholder until the parser lands (replaced on merge).
    pub fn parse(s: &str) -> Result<Config, ConfigError> {
        if s.trim().is_empty() {
            return Ok(Config::default());
        }
        Err(ConfigError {
            source: "CUDALLOC_CONF".into(),
            key: None,
            position: 0,
            message: "configuration parsing not available in this build".into(),
        })
    }

    /// Placeholder until the parser lands (replaced on merge).
    pub fn from_env() -> Result<(Config, Vec<String>), ConfigError> {
        match std::env::var("CUDALLOC_CONF") {
            Ok(s) => Ok((Config::parse(&s)?, Vec::new())),
            Err(_) => Ok((Config::default(), Vec::new())),
        }
    }
}

impl fmt::Display for Config {
    /// Placeholder until the parser lands (replaced on merge).
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Ok(())
    }
}
