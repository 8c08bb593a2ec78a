//! The lowest layer of the CPU paths, below every module that computes: host views of
//! candle tensors, and the rule by which a rayon loop follows the caller's
//! [`faer::Par`].
//!
//! Depends only on [`crate::error`].

use candle_core::{DType, Device, Tensor};
use faer::Par;
use rayon::iter::{IndexedParallelIterator, MinLen};

use crate::error::{LlamaIoError, Result};

/// Checks that a tensor is f32 (the only dtype the forward pass uses).
pub(crate) fn ensure_f32(t: &Tensor, what: &str) -> Result<()> {
    if t.dtype() == DType::F32 {
        Ok(())
    } else {
        Err(LlamaIoError::InvalidArgument(format!(
            "{what} has dtype {:?}, expected f32",
            t.dtype()
        )))
    }
}

/// Calls `f` with the row-major f32 values of `t` (contiguous), borrowing the
/// storage on the CPU and copying to the host from other devices.
pub(crate) fn with_host_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    ensure_f32(t, "tensor")?;
    let t = if t.device().is_cpu() {
        t.contiguous()?
    } else {
        t.to_device(&Device::Cpu)?
    };
    let (storage, layout) = t.storage_and_layout();
    let (candle_core::Storage::Cpu(cpu), Some((start, end))) =
        (&*storage, layout.contiguous_offsets())
    else {
        return Err(candle_core::Error::Msg("expected a contiguous CPU tensor".into()).into());
    };
    Ok(f(&cpu.as_slice::<f32>()?[start..end]))
}

/// A rayon loop that follows a [`Par`]: under [`Par::Seq`] it runs on the calling
/// thread, in order, as one piece (no rayon job is spawned); under [`Par::Rayon`] it
/// splits exactly as a plain rayon loop does (on the current rayon pool, whatever
/// thread count the `Par` names), so its results are the same as before this rule.
pub(crate) trait FollowPar: IndexedParallelIterator {
    /// `self` split according to `par`.
    fn follow(self, par: Par) -> MinLen<Self> {
        // A minimum piece length of `usize::MAX` forbids every split; 1 is rayon's
        // default.
        self.with_min_len(match par {
            Par::Seq => usize::MAX,
            Par::Rayon(_) => 1,
        })
    }
}

impl<I: IndexedParallelIterator> FollowPar for I {}

#[cfg(test)]
mod tests {
    use rayon::prelude::*;

    use super::*;

    /// Under `Par::Seq` every item runs on the calling thread, in order, with one
    /// `map_init` state; under `Par::Rayon` the results are the same.
    #[test]
    fn sequential_loops_stay_on_the_calling_thread() {
        let caller = std::thread::current().id();
        let seen: Vec<(usize, std::thread::ThreadId, usize)> = (0..1000)
            .into_par_iter()
            .follow(Par::Seq)
            .map_init(
                || 0usize,
                |count, i| {
                    *count += 1;
                    (i, std::thread::current().id(), *count)
                },
            )
            .collect();
        for (k, &(i, thread, count)) in seen.iter().enumerate() {
            assert_eq!((i, thread, count), (k, caller, k + 1));
        }
        let parallel: Vec<usize> = (0..1000)
            .into_par_iter()
            .follow(Par::rayon(0))
            .map(|i| i * 3)
            .collect();
        assert_eq!(parallel, (0..1000).map(|i| i * 3).collect::<Vec<_>>());
    }
}
