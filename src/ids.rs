//! Names both layers share: the pool a block belongs to, and the stream and event ids the
//! backend hands out. Nothing here depends on the policy or the front.

/// A stream handle. For CUDA this is the raw `CUstream` value (0 is the legacy default
/// stream); for the simulator, an id from
/// [`SimBackend::create_stream`](crate::backend::SimBackend::create_stream) or any value the
/// caller chooses.
pub type StreamId = u64;

/// An event handle, as returned by
/// [`Backend::record_event`](crate::backend::Backend::record_event).
pub type EventId = u64;

/// Which pool a block belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PoolKind {
    /// Requests ≤ 1 MiB, 2 MiB segments.
    Small,
    /// Everything else.
    Large,
}

impl PoolKind {
    /// Index in a [`StatArray`](crate::stats::StatArray): 1 small, 2 large (0 is all).
    #[inline]
    pub fn stat_index(self) -> usize {
        match self {
            PoolKind::Small => 1,
            PoolKind::Large => 2,
        }
    }

    #[inline]
    pub(super) fn idx(self) -> usize {
        self.stat_index() - 1
    }

    /// The other pool.
    pub(super) fn other(self) -> PoolKind {
        match self {
            PoolKind::Small => PoolKind::Large,
            PoolKind::Large => PoolKind::Small,
        }
    }

    /// Name as PyTorch's snapshots spell it.
    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Small => "small",
            PoolKind::Large => "large",
        }
    }
}
