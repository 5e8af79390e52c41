//! Configuration: `CUDALLOC_CONF`, in the syntax and with the keys of PyTorch's
//! `PYTORCH_CUDA_ALLOC_CONF` (`key:value,key:value`), also settable from code.
//!
//! `CUDALLOC_CONF` is strict: an unknown key, a malformed or out-of-range value is an error
//! naming the key and its byte position. When it is unset, the keys cudalloc supports are
//! taken from `PYTORCH_CUDA_ALLOC_CONF` (or `PYTORCH_ALLOC_CONF`), and the others are
//! skipped with one line each saying so.

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
    /// `expandable_segments`: per stream and pool, one segment whose address range is
    /// reserved large and whose pages are mapped as needed (needs a backend with virtual
    /// memory management). On by default: it reserves less than fixed segments on every
    /// trace measured (README, Results); `expandable_segments:False` gives PyTorch's own
    /// fixed-segment policy.
    pub expandable_segments: bool,
    /// Whether the configuration named `expandable_segments`. When it did not, a backend
    /// without virtual memory management gets fixed segments instead of an error.
    pub expandable_segments_set: bool,
    /// `expandable_min_map_mb`, in bytes: the least the large pool's expandable segment
    /// maps at once when it grows for a request below 10 MiB (the requests PyTorch serves
    /// from 20 MiB segments); the pages beyond the request stay mapped and free. `None`:
    /// [`Config::large_min_map`] decides.
    pub expandable_min_map: Option<u64>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_split_size: u64::MAX,
            max_non_split_rounding: 20 << 20,
            roundup_power2_divisions: [0; ROUNDUP_POWER2_INTERVALS],
            garbage_collection_threshold: 0.0,
            expandable_segments: true,
            expandable_segments_set: false,
            expandable_min_map: None,
        }
    }
}

/// [`Config::large_min_map`] of the defaults: PyTorch's large segment size.
pub const DEFAULT_MIN_MAP: u64 = 20 << 20;

impl Config {
    /// The least the large pool's expandable segment maps per growth for a request below
    /// 10 MiB: `expandable_min_map_mb` if given; else 20 MiB with the default expandable
    /// segments (about half the driver calls of mapping exactly the pages needed, at no
    /// peak cost on 8 of the 10 traces measured: README, Results), and 0 — exactly the
    /// pages needed, as PyTorch's expandable segments map — when `expandable_segments:True`
    /// is asked for.
    pub fn large_min_map(&self) -> u64 {
        self.expandable_min_map
            .unwrap_or(if self.expandable_segments_set {
                0
            } else {
                DEFAULT_MIN_MAP
            })
    }

    /// PyTorch's own policy: the defaults with fixed segments (`expandable_segments:False`).
    pub fn fixed_segments() -> Config {
        Config {
            expandable_segments: false,
            expandable_segments_set: true,
            ..Config::default()
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

const MIB: u64 = 1 << 20;
/// Smallest accepted `max_split_size_mb` / `max_non_split_rounding_mb` (PyTorch's
/// `kLargeBuffer` in MiB).
pub const MIN_SPLIT_MB: u64 = 20;

/// Largest `expandable_min_map_mb` accepted (1 GiB).
pub const MAX_MIN_MAP_MB: u64 = 1024;

/// Keys PyTorch accepts that cudalloc does not implement (skipped when read from PyTorch's
/// variables, errors in `CUDALLOC_CONF`).
const PYTORCH_ONLY_KEYS: [&str; 7] = [
    "release_lock_on_cudamalloc",
    "pinned_use_cuda_host_register",
    "pinned_num_register_threads",
    "pinned_use_background_threads",
    "pinned_reserve_segment_size_mb",
    "graph_capture_record_stream_reuse",
    "per_process_memory_fraction",
];

const KNOWN_KEYS: &str = "max_split_size_mb, max_non_split_rounding_mb, \
    roundup_power2_divisions, garbage_collection_threshold, expandable_segments, \
    expandable_min_map_mb, backend";

#[derive(Debug, Clone, PartialEq)]
enum Tok<'a> {
    Word(&'a str),
    Punct(char),
}

/// Split into words and the punctuation `, : [ ]`, with byte positions; spaces separate.
fn lex(s: &str) -> Vec<(usize, Tok<'_>)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in s.char_indices() {
        let punct = matches!(c, ',' | ':' | '[' | ']');
        if punct || c.is_whitespace() {
            if let Some(b) = start.take() {
                out.push((b, Tok::Word(&s[b..i])));
            }
            if punct {
                out.push((i, Tok::Punct(c)));
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(b) = start {
        out.push((b, Tok::Word(&s[b..])));
    }
    out
}

struct Parser<'a> {
    source: &'a str,
    input: &'a str,
    toks: Vec<(usize, Tok<'a>)>,
    i: usize,
    key: Option<String>,
}

impl<'a> Parser<'a> {
    fn err(&self, position: usize, message: impl Into<String>) -> ConfigError {
        ConfigError {
            source: self.source.to_string(),
            key: self.key.clone(),
            position,
            message: message.into(),
        }
    }

    fn pos(&self) -> usize {
        self.toks.get(self.i).map_or(self.input.len(), |t| t.0)
    }

    fn peek(&self) -> Option<&Tok<'a>> {
        self.toks.get(self.i).map(|t| &t.1)
    }

    fn expect_punct(&mut self, c: char) -> Result<(), ConfigError> {
        match self.peek() {
            Some(Tok::Punct(p)) if *p == c => {
                self.i += 1;
                Ok(())
            }
            _ => Err(self.err(self.pos(), format!("expected '{c}'"))),
        }
    }

    fn word(&mut self, what: &str) -> Result<(usize, &'a str), ConfigError> {
        match self.toks.get(self.i) {
            Some(&(p, Tok::Word(w))) => {
                self.i += 1;
                Ok((p, w))
            }
            _ => Err(self.err(self.pos(), format!("expected {what}"))),
        }
    }

    fn integer(&mut self, what: &str) -> Result<(usize, u64), ConfigError> {
        let (p, w) = self.word(what)?;
        w.parse::<u64>()
            .map(|v| (p, v))
            .map_err(|_| self.err(p, format!("'{w}' is not a non-negative integer ({what})")))
    }

    fn boolean(&mut self) -> Result<bool, ConfigError> {
        let (p, w) = self.word("True or False")?;
        match w {
            "True" | "true" => Ok(true),
            "False" | "false" => Ok(false),
            _ => Err(self.err(p, format!("'{w}' is not True or False"))),
        }
    }

    /// Skip the value of an unsupported key (a word or a bracketed list).
    fn skip_value(&mut self) -> Result<(), ConfigError> {
        if self.peek() == Some(&Tok::Punct('[')) {
            let open = self.pos();
            while let Some(t) = self.peek().cloned() {
                self.i += 1;
                if t == Tok::Punct(']') {
                    return Ok(());
                }
            }
            return Err(self.err(open, "unbalanced '['"));
        }
        self.word("a value").map(|_| ())
    }
}

fn check_power2_or_zero(p: &Parser<'_>, pos: usize, v: u64) -> Result<(), ConfigError> {
    if v == 0 || v.is_power_of_two() {
        Ok(())
    } else {
        Err(p.err(
            pos,
            format!("divisions must be a power of two or 0 (got {v})"),
        ))
    }
}

fn parse_roundup(p: &mut Parser<'_>, cfg: &mut Config) -> Result<(), ConfigError> {
    if p.peek() != Some(&Tok::Punct('[')) {
        let (pos, v) = p.integer("the number of divisions")?;
        check_power2_or_zero(p, pos, v)?;
        cfg.roundup_power2_divisions = [v; ROUNDUP_POWER2_INTERVALS];
        return Ok(());
    }
    let open = p.pos();
    p.i += 1;
    let mut table = [0u64; ROUNDUP_POWER2_INTERVALS];
    // Each `size_mb:divisions` applies from the previous bound up to (not including) the
    // interval of `size_mb`; `>` applies from there to the end — the documented meaning of
    // `[256:1,512:2,1024:4,>:8]`: 1 below 256 MiB, 2 for 256–512 MiB, 4 for 512 MiB–1 GiB, 8
    // above.
    let mut from = 0usize;
    let mut saw_rest = false;
    loop {
        match p.peek() {
            Some(Tok::Punct(']')) => {
                p.i += 1;
                break;
            }
            None => return Err(p.err(open, "unbalanced '[': missing ']'")),
            _ => {}
        }
        let (kpos, k) = p.word("a size in MiB or '>'")?;
        p.expect_punct(':')?;
        let (vpos, v) = p.integer("the number of divisions")?;
        check_power2_or_zero(p, vpos, v)?;
        if saw_rest {
            return Err(p.err(kpos, "'>' must be the last entry"));
        }
        if k == ">" {
            table[from..].fill(v);
            from = ROUNDUP_POWER2_INTERVALS;
            saw_rest = true;
        } else {
            let mb: u64 = k
                .parse()
                .map_err(|_| p.err(kpos, format!("'{k}' is not a size in MiB or '>'")))?;
            if !mb.is_power_of_two() {
                return Err(p.err(
                    kpos,
                    format!("interval bound {mb} MiB is not a power of two"),
                ));
            }
            let idx = (mb.trailing_zeros() as usize).min(ROUNDUP_POWER2_INTERVALS - 1);
            if idx < from {
                return Err(p.err(kpos, "interval bounds must increase"));
            }
            table[from..idx].fill(v);
            from = idx;
        }
        match p.peek() {
            Some(Tok::Punct(',')) => p.i += 1,
            Some(Tok::Punct(']')) => {}
            None => return Err(p.err(open, "unbalanced '[': missing ']'")),
            _ => return Err(p.err(p.pos(), "expected ',' or ']'")),
        }
    }
    cfg.roundup_power2_divisions = table;
    Ok(())
}

/// How unsupported keys are treated.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Strict,
    Lenient,
}

fn parse_with(
    source: &str,
    s: &str,
    mode: Mode,
    notes: &mut Vec<String>,
) -> Result<Config, ConfigError> {
    let mut p = Parser {
        source,
        input: s,
        toks: lex(s),
        i: 0,
        key: None,
    };
    let mut cfg = Config::default();
    while p.i < p.toks.len() {
        p.key = None;
        let (kpos, key) = p.word("a key")?;
        p.key = Some(key.to_string());
        p.expect_punct(':')?;
        match key {
            "max_split_size_mb" | "max_non_split_rounding_mb" => {
                let (vpos, v) = p.integer("a size in MiB")?;
                if v < MIN_SPLIT_MB {
                    return Err(p.err(vpos, format!("{v} is too small, must be >= {MIN_SPLIT_MB}")));
                }
                let bytes = v.saturating_mul(MIB);
                if key == "max_split_size_mb" {
                    cfg.max_split_size = bytes;
                } else {
                    cfg.max_non_split_rounding = bytes;
                }
            }
            "roundup_power2_divisions" => parse_roundup(&mut p, &mut cfg)?,
            "garbage_collection_threshold" => {
                let (vpos, w) = p.word("a fraction")?;
                let v: f64 = w
                    .parse()
                    .map_err(|_| p.err(vpos, format!("'{w}' is not a number")))?;
                if !(v > 0.0 && v < 1.0) {
                    return Err(p.err(vpos, format!("{v} is not within (0, 1), exclusive")));
                }
                cfg.garbage_collection_threshold = v;
            }
            "expandable_segments" => {
                cfg.expandable_segments = p.boolean()?;
                cfg.expandable_segments_set = true;
            }
            "expandable_min_map_mb" => {
                let (vpos, v) = p.integer("a size in MiB")?;
                if v > MAX_MIN_MAP_MB {
                    return Err(p.err(
                        vpos,
                        format!("{v} is too large, must be <= {MAX_MIN_MAP_MB}"),
                    ));
                }
                cfg.expandable_min_map = Some(v * MIB);
            }
            "backend" => {
                let (vpos, w) = p.word("native")?;
                match w {
                    "native" => {}
                    "cudaMallocAsync" => {
                        return Err(p.err(
                            vpos,
                            "cudalloc is itself the allocator; backend:cudaMallocAsync \
                             would bypass it (use backend:native or drop the key)",
                        ));
                    }
                    _ => return Err(p.err(vpos, format!("unknown backend '{w}' (native)"))),
                }
            }
            _ => {
                let known_to_pytorch = PYTORCH_ONLY_KEYS.contains(&key);
                if mode == Mode::Lenient {
                    p.skip_value()?;
                    let why = if known_to_pytorch {
                        "not supported by cudalloc"
                    } else {
                        "unknown key"
                    };
                    notes.push(format!("cudalloc: ignoring {source} key '{key}' ({why})"));
                } else if known_to_pytorch {
                    return Err(p.err(kpos, "this PyTorch option is not supported by cudalloc"));
                } else {
                    return Err(p.err(kpos, format!("unknown key (known keys: {KNOWN_KEYS})")));
                }
            }
        }
        p.key = None;
        match p.peek() {
            None => {}
            Some(Tok::Punct(',')) => {
                p.i += 1;
                if p.i == p.toks.len() {
                    return Err(p.err(p.pos(), "expected a key after ','"));
                }
            }
            Some(_) => {
                p.key = Some(key.to_string());
                return Err(p.err(p.pos(), "expected ',' before the next key"));
            }
        }
    }
    Ok(cfg)
}

impl Config {
    /// Parse a `CUDALLOC_CONF` string (strict: unknown keys are errors).
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key and the byte position of the problem.
    pub fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse_from("CUDALLOC_CONF", s)
    }

    /// As [`Config::parse`], naming `source` in errors.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the key and the byte position of the problem.
    pub fn parse_from(source: &str, s: &str) -> Result<Config, ConfigError> {
        parse_with(source, s, Mode::Strict, &mut Vec::new())
    }

    /// Parse PyTorch's variable (`PYTORCH_CUDA_ALLOC_CONF` / `PYTORCH_ALLOC_CONF`): keys
    /// cudalloc supports apply, the others are skipped; returns one line per skipped key.
    ///
    /// # Errors
    /// A malformed value of a supported key.
    pub fn parse_pytorch(source: &str, s: &str) -> Result<(Config, Vec<String>), ConfigError> {
        let mut notes = Vec::new();
        let cfg = parse_with(source, s, Mode::Lenient, &mut notes)?;
        Ok((cfg, notes))
    }

    /// The configuration from the environment: `CUDALLOC_CONF` if set (even empty), else
    /// the supported keys of `PYTORCH_CUDA_ALLOC_CONF`, else `PYTORCH_ALLOC_CONF`, else the
    /// defaults. Returns the lines to print about skipped keys.
    ///
    /// # Errors
    /// A [`ConfigError`] from the variable used.
    pub fn from_env() -> Result<(Config, Vec<String>), ConfigError> {
        Config::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Config::from_env`] over any variable lookup (for tests and embedders).
    ///
    /// # Errors
    /// A [`ConfigError`] from the variable used.
    pub fn from_vars(
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        if let Some(s) = get("CUDALLOC_CONF") {
            return Ok((Config::parse(&s)?, Vec::new()));
        }
        for var in ["PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF"] {
            if let Some(s) = get(var) {
                return Config::parse_pytorch(var, &s);
            }
        }
        Ok((Config::default(), Vec::new()))
    }

    /// Divisions of `roundup_power2_divisions` that apply to a request of `size` bytes
    /// (interval `log2(size / 1 MiB)`, clamped to the table).
    #[inline]
    pub fn roundup_divisions_for(&self, size: u64) -> u64 {
        let log = 63 - size.max(1).leading_zeros() as usize;
        let idx = log.saturating_sub(20).min(ROUNDUP_POWER2_INTERVALS - 1);
        self.roundup_power2_divisions[idx]
    }

    fn code_error(key: &str, message: String) -> ConfigError {
        ConfigError {
            source: "code".into(),
            key: Some(key.into()),
            position: 0,
            message,
        }
    }

    /// Set `max_split_size_mb`.
    ///
    /// # Errors
    /// A value below 20.
    pub fn with_max_split_size_mb(mut self, mb: u64) -> Result<Self, ConfigError> {
        if mb < MIN_SPLIT_MB {
            return Err(Config::code_error(
                "max_split_size_mb",
                format!("{mb} is too small, must be >= {MIN_SPLIT_MB}"),
            ));
        }
        self.max_split_size = mb.saturating_mul(MIB);
        Ok(self)
    }

    /// Set `garbage_collection_threshold`.
    ///
    /// # Errors
    /// A value outside (0, 1).
    pub fn with_garbage_collection_threshold(mut self, t: f64) -> Result<Self, ConfigError> {
        if !(t > 0.0 && t < 1.0) {
            return Err(Config::code_error(
                "garbage_collection_threshold",
                format!("{t} is not within (0, 1), exclusive"),
            ));
        }
        self.garbage_collection_threshold = t;
        Ok(self)
    }

    /// Set `roundup_power2_divisions` for every size.
    ///
    /// # Errors
    /// A value that is neither 0 nor a power of two.
    pub fn with_roundup_power2_divisions(mut self, d: u64) -> Result<Self, ConfigError> {
        if d != 0 && !d.is_power_of_two() {
            return Err(Config::code_error(
                "roundup_power2_divisions",
                format!("divisions must be a power of two or 0 (got {d})"),
            ));
        }
        self.roundup_power2_divisions = [d; ROUNDUP_POWER2_INTERVALS];
        Ok(self)
    }
}

impl fmt::Display for Config {
    /// The canonical `CUDALLOC_CONF` string: non-default keys only, read back by
    /// [`Config::parse`] to an equal configuration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = Config::default();
        let mut parts = Vec::new();
        if self.max_split_size != d.max_split_size {
            parts.push(format!("max_split_size_mb:{}", self.max_split_size / MIB));
        }
        if self.max_non_split_rounding != d.max_non_split_rounding {
            parts.push(format!(
                "max_non_split_rounding_mb:{}",
                self.max_non_split_rounding / MIB
            ));
        }
        let t = &self.roundup_power2_divisions;
        if t != &d.roundup_power2_divisions {
            if t.iter().all(|&v| v == t[0]) {
                parts.push(format!("roundup_power2_divisions:{}", t[0]));
            } else {
                // Runs of equal values, each written as "bound:value" up to the next change.
                let mut items = Vec::new();
                let mut start = 0;
                while start < t.len() {
                    let mut end = start;
                    while end < t.len() && t[end] == t[start] {
                        end += 1;
                    }
                    if end == t.len() {
                        items.push(format!(">:{}", t[start]));
                    } else {
                        items.push(format!("{}:{}", 1u64 << end, t[start]));
                    }
                    start = end;
                }
                parts.push(format!("roundup_power2_divisions:[{}]", items.join(",")));
            }
        }
        if self.garbage_collection_threshold != d.garbage_collection_threshold {
            parts.push(format!(
                "garbage_collection_threshold:{}",
                self.garbage_collection_threshold
            ));
        }
        if self.expandable_segments_set || !self.expandable_segments {
            parts.push(
                if self.expandable_segments {
                    "expandable_segments:True"
                } else {
                    "expandable_segments:False"
                }
                .into(),
            );
        }
        if let Some(b) = self.expandable_min_map {
            parts.push(format!("expandable_min_map_mb:{}", b / MIB));
        }
        write!(f, "{}", parts.join(","))
    }
}

#[cfg(test)]
mod tests;
