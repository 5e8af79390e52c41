//! `cudalloc explain`: read PyTorch's `CUDA out of memory` message and say whether it is a
//! real shortage (the tensors do not fit: no allocator setting helps, cut N bytes) or
//! fragmentation (enough memory was there, scattered in cached blocks: a setting helps),
//! from the numbers in the message alone, saying plainly what they cannot tell.
//!
//! Both formats PyTorch has printed are read: the older "(GPU 0; 11.17 GiB total capacity;
//! 9.00 GiB already allocated; 1.50 GiB free; 9.50 GiB reserved in total by PyTorch)" and the
//! current "GPU 0 has a total capacity of … of which … is free. … Of the allocated memory …
//! is allocated by PyTorch, and … is reserved by PyTorch but unallocated." This module only
//! reads and judges; it must not replay anything (a snapshot's replay gives the full answer).

use std::fmt;

use regex::Regex;

use crate::oom::format_bytes;

/// The verdict (the first line `explain` prints, a contract: `verdict: shortage`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Live tensors plus the request exceed what the device can hold for this process.
    Shortage,
    /// The memory was there, in pieces no block of the request's size could be cut from.
    Fragmentation,
    /// The message lacks the figures to tell.
    Unknown,
}

impl Verdict {
    /// The word of the contract.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Shortage => "shortage",
            Verdict::Fragmentation => "fragmentation",
            Verdict::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which format the message was in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageFormat {
    /// PyTorch 2.1 and later: "GPU 0 has a total capacity of … of which … is free".
    Current,
    /// Before: "(GPU 0; … total capacity; … already allocated; … free; … reserved …)".
    Older,
    /// Only "Tried to allocate …" was found.
    RequestOnly,
}

/// The figures read from a message (bytes; `None` where the message does not say).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OomMessage {
    /// Which format.
    pub format: MessageFormat,
    /// The device index.
    pub device: Option<u32>,
    /// The request that failed.
    pub request: u64,
    /// The device's memory.
    pub total: Option<u64>,
    /// What the driver had free.
    pub free: Option<u64>,
    /// What PyTorch had allocated to tensors.
    pub allocated: Option<u64>,
    /// What PyTorch had reserved (allocated plus cached).
    pub reserved: Option<u64>,
    /// What the process used in all, PyTorch's memory and the rest (current format).
    pub process_in_use: Option<u64>,
    /// How far the request, free, allocated and reserved figures may be off together, from
    /// the precision they are printed with ("9.00 GiB": ± 0.005 GiB).
    pub rounding: u64,
}

/// The judgement of one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Explanation {
    /// The figures it rests on.
    pub message: OomMessage,
    /// The verdict.
    pub verdict: Verdict,
    /// For a shortage, how many bytes the program must give up at least.
    pub short_by: Option<u64>,
    /// What the message could not tell (each a sentence).
    pub missing: Vec<String>,
}

/// A size as PyTorch prints it: "512.00 MiB", "0 bytes", "1.50 GiB".
fn size(num: &str, unit: &str) -> Option<u64> {
    Some(size_and_rounding(num, unit)?.0)
}

/// [`size`] and half a unit of its last printed digit.
fn size_and_rounding(num: &str, unit: &str) -> Option<(u64, u64)> {
    let v: f64 = num.parse().ok()?;
    let decimals = num.split_once('.').map_or(0, |(_, d)| d.len()) as i32;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "b" | "bytes" | "byte" => 1u64,
        "kib" | "kb" => 1 << 10,
        "mib" | "mb" => 1 << 20,
        "gib" | "gb" => 1 << 30,
        "tib" | "tb" => 1 << 40,
        _ => return None,
    };
    let b = v * mult as f64;
    let half = if mult == 1 {
        0.0
    } else {
        0.5 * 10f64.powi(-decimals) * mult as f64
    };
    (b.is_finite() && b >= 0.0 && b < 2f64.powi(63)).then_some((b.round() as u64, half as u64))
}

const SIZE: &str = r"([0-9]+(?:\.[0-9]+)?)\s*(bytes|byte|B|KiB|KB|MiB|MB|GiB|GB|TiB|TB)";

fn find(re: &str, text: &str) -> Option<Vec<String>> {
    let re = Regex::new(&format!("(?i){}", re.replace("SIZE", SIZE))).expect("valid pattern");
    re.captures(text).map(|c| {
        c.iter()
            .skip(1)
            .map(|m| m.map_or(String::new(), |m| m.as_str().to_string()))
            .collect()
    })
}

fn size_at(c: &[String], i: usize) -> Option<u64> {
    size(c.get(i)?, c.get(i + 1)?)
}

fn rounding_at(c: &[String], i: usize) -> u64 {
    match (c.get(i), c.get(i + 1)) {
        (Some(n), Some(u)) => size_and_rounding(n, u).map_or(0, |(_, r)| r),
        _ => 0,
    }
}

/// Read the figures of an out-of-memory message.
///
/// # Errors
/// The text has no "Tried to allocate" figure: it is not PyTorch's out-of-memory message.
pub fn parse(text: &str) -> Result<OomMessage, String> {
    // Messages pasted from terminals wrap lines: read them as one.
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let req = find(r"Tried to allocate SIZE", &text);
    let request = req.as_ref().and_then(|c| size_at(c, 0)).ok_or(
        "no \"Tried to allocate N MiB\" in the input: paste PyTorch's whole CUDA out of \
             memory message",
    )?;
    let mut m = OomMessage {
        format: MessageFormat::RequestOnly,
        device: find(r"GPU ([0-9]+)", &text).and_then(|c| c[0].parse().ok()),
        request,
        total: None,
        free: None,
        allocated: None,
        reserved: None,
        process_in_use: None,
        rounding: req.as_ref().map_or(0, |c| rounding_at(c, 0)),
    };
    if let Some(c) = find(
        r"SIZE total capacity; SIZE already allocated; SIZE free; SIZE reserved in total by PyTorch",
        &text,
    ) {
        m.format = MessageFormat::Older;
        m.total = size_at(&c, 0);
        m.allocated = size_at(&c, 2);
        m.free = size_at(&c, 4);
        m.reserved = size_at(&c, 6);
        m.rounding += rounding_at(&c, 2) + rounding_at(&c, 4) + rounding_at(&c, 6);
    } else if let Some(c) = find(r"total capacity of SIZE of which SIZE is free", &text) {
        m.format = MessageFormat::Current;
        m.total = size_at(&c, 0);
        m.free = size_at(&c, 2);
        m.process_in_use =
            find(r"this process has SIZE memory in use", &text).and_then(|c| size_at(&c, 0));
        m.rounding += rounding_at(&c, 2);
        let allocated = find(r"SIZE is allocated by PyTorch", &text);
        m.allocated = allocated.as_ref().and_then(|c| size_at(c, 0));
        let unallocated_at = find(r"SIZE is reserved by PyTorch but unallocated", &text);
        let unallocated = unallocated_at.as_ref().and_then(|c| size_at(c, 0));
        // Live + request - (free + reserved) is request - free - unallocated here: the
        // allocated figure cancels out, and so does its rounding.
        if let Some(c) = &unallocated_at {
            m.rounding += rounding_at(c, 0);
        }
        m.reserved = match (m.allocated, unallocated) {
            (Some(a), Some(u)) => Some(a.saturating_add(u)),
            _ => None,
        };
    }
    Ok(m)
}

/// The verdict on exact figures: the live bytes and the request against what the process
/// could hold (the driver's free bytes and PyTorch's reserve), within `rounding` of a tie
/// unknown. Returns the shortfall of a shortage.
pub fn judge(
    live: u64,
    request: u64,
    free: u64,
    reserved: u64,
    rounding: u64,
) -> (Verdict, Option<u64>) {
    let holdable = free.saturating_add(reserved);
    let need = live.saturating_add(request);
    if need > holdable.saturating_add(rounding) {
        (Verdict::Shortage, Some(need - holdable))
    } else if need.saturating_add(rounding) < holdable {
        (Verdict::Fragmentation, None)
    } else {
        (Verdict::Unknown, None)
    }
}

/// Judge a message's figures.
///
/// When PyTorch raises out of memory it has already released every cached segment with
/// nothing allocated in it and tried again; what it still reserves beyond its tensors is
/// free space inside segments that tensors still use. So the memory this process could give
/// a tensor is the driver's free memory plus PyTorch's reserve: if the live tensors and the
/// request exceed that, it is a shortage; if not, the space was there but in pieces.
pub fn explain(m: &OomMessage) -> Explanation {
    let mut missing = Vec::new();
    let (Some(free), Some(allocated), Some(reserved)) = (m.free, m.allocated, m.reserved) else {
        if m.format == MessageFormat::RequestOnly {
            missing.push(
                "the message has no device figures (total capacity, free memory)".to_string(),
            );
        }
        missing.push(
            "the message does not say how much PyTorch had allocated and reserved (the \
             sentence \"Of the allocated memory … is allocated by PyTorch, and … is reserved \
             by PyTorch but unallocated\"): without it, whether the cache held enough free \
             memory cannot be told"
                .to_string(),
        );
        return Explanation {
            message: m.clone(),
            verdict: Verdict::Unknown,
            short_by: None,
            missing,
        };
    };
    missing.push(
        "how the free memory was laid out (which cached blocks, on which streams) is not in \
         the message; a snapshot's replay shows it and what each setting would reserve"
            .to_string(),
    );
    let (verdict, short_by) = judge(allocated, m.request, free, reserved, m.rounding);
    if verdict == Verdict::Unknown {
        missing.insert(
            0,
            format!(
                "which side it falls on: the tensors and the request fill what this process \
                 could hold to within the rounding of the message's figures (± {})",
                format_bytes(m.rounding)
            ),
        );
    }
    Explanation {
        message: m.clone(),
        verdict,
        short_by,
        missing,
    }
}

/// Parse and judge.
///
/// # Errors
/// See [`parse`].
pub fn explain_text(text: &str) -> Result<Explanation, String> {
    Ok(explain(&parse(text)?))
}

fn opt_bytes(b: Option<u64>) -> String {
    b.map_or_else(|| "unknown".to_string(), format_bytes)
}

/// How to record a snapshot, for the full answer.
pub const HOW_TO_SNAPSHOT: &str = "record a snapshot of the run (torch.cuda.memory.\
    _record_memory_history() at the start, torch.cuda.memory._dump_snapshot(\"snap.pickle\") \
    in an except torch.OutOfMemoryError block) and run `cudalloc replay snap.pickle --suggest` \
    for the full answer";

impl Explanation {
    /// The text `cudalloc explain` prints: the verdict line first.
    pub fn render(&self) -> String {
        let m = &self.message;
        let mut out = format!("verdict: {}\n", self.verdict);
        let dev = m
            .device
            .map_or_else(String::new, |d| format!(" on GPU {d}"));
        out += &format!(
            "  asked for {}{dev}; PyTorch had {} allocated to tensors and {} reserved; the \
             device had {} free of {}\n",
            format_bytes(m.request),
            opt_bytes(m.allocated),
            opt_bytes(m.reserved),
            opt_bytes(m.free),
            opt_bytes(m.total),
        );
        if let (Some(total), Some(free), Some(reserved)) = (m.total, m.free, m.reserved) {
            let others = total.saturating_sub(free).saturating_sub(reserved);
            out += &format!(
                "  this process could hold at most {} for tensors (free + PyTorch's reserve); \
                 {} of the device was used outside PyTorch's cache (the CUDA context, other \
                 libraries, other processes)\n",
                format_bytes(free.saturating_add(reserved)),
                format_bytes(others),
            );
        }
        match self.verdict {
            Verdict::Shortage => {
                let n = self.short_by.unwrap_or(0);
                out += &format!(
                    "  a real shortage: the live tensors and the request need {} more than \
                     that. No allocator setting helps (empty_cache() does not either: PyTorch \
                     already gave its free cache back before failing). Cut at least {}:\n",
                    format_bytes(n),
                    format_bytes(n),
                );
                out += "    - a smaller batch: activation memory scales about linearly with it \
                        (half the batch, about half the activations); gradient accumulation \
                        keeps the effective batch\n";
                out += "    - mixed precision (torch.autocast): typically 30-50 % less memory\n";
                out += "    - gradient checkpointing: activations recomputed in the backward \
                        pass, far less activation memory for about 20-30 % more time\n";
                out += "    - a smaller model, or freeing tensors kept alive by mistake (losses \
                        summed without .item(), lists of outputs)\n";
            }
            Verdict::Fragmentation => {
                let cached = m
                    .reserved
                    .unwrap_or(0)
                    .saturating_sub(m.allocated.unwrap_or(0));
                out += &format!(
                    "  fragmentation: {} was cached but free, and with the device's free \
                     memory that is enough for the request; it was split in pieces no block \
                     of {} could be cut from. An allocator setting helps: \
                     PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (free pages are given \
                     back and mapped where needed), or max_split_size_mb:N below the request; \
                     with cudalloc, CUDALLOC_CONF=expandable_segments:True\n",
                    format_bytes(cached),
                    format_bytes(m.request),
                );
            }
            Verdict::Unknown => {}
        }
        for s in &self.missing {
            out += &format!("  not known: {s}\n");
        }
        out += &format!("  {HOW_TO_SNAPSHOT}\n");
        out
    }

    /// The `--json` object (`verdict` and `short_by_bytes` are the contract).
    pub fn to_json(&self) -> serde_json::Value {
        let m = &self.message;
        serde_json::json!({
            "verdict": self.verdict.as_str(),
            "short_by_bytes": self.short_by,
            "request_bytes": m.request,
            "device": m.device,
            "device_total_bytes": m.total,
            "device_free_bytes": m.free,
            "allocated_bytes": m.allocated,
            "reserved_bytes": m.reserved,
            "process_in_use_bytes": m.process_in_use,
            "format": match m.format {
                MessageFormat::Current => "current",
                MessageFormat::Older => "older",
                MessageFormat::RequestOnly => "request only",
            },
            "not_known": self.missing,
        })
    }
}
