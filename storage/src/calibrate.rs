//! Durability calibration: measure write + fdatasync against `RWF_DSYNC` writes on this device
//! when a store opens, and use the faster.
//!
//! Both modes give the same guarantee; which is faster depends on the file system, the device
//! and the kernel (on ext4 over virtio here, the difference is large, BENCHMARKS.md). The
//! writes go to the spare segment's zero-filled data area and write zeros, so they change
//! nothing on disk.

use crate::buf::AlignedBuf;
use crate::error::{Error, Result};
use crate::format::BLOCK_SIZE;
use crate::io::{Durability, Io};
use crate::lifecycle::Spare;
use crate::store::Store;

/// The outcome of a calibration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Calibration {
    /// Median latency of a 4 KiB `RWF_DSYNC` write, microseconds.
    pub dsync_us_p50: u64,
    /// Median latency of a 4 KiB write linked to fdatasync, microseconds.
    pub fdatasync_us_p50: u64,
    /// Writes measured per mode.
    pub writes: usize,
    /// The mode chosen.
    pub chosen: Durability,
}

const CALIBRATION_TOKEN: u64 = u64::MAX - 1;

impl<I: Io> Store<I> {
    /// Measures both durable write modes (nothing else may be in flight).
    pub(crate) fn calibrate(&mut self) -> Result<Calibration> {
        let Spare::Ready(spare) = &self.spare else {
            unreachable!("calibration runs after the spare is prepared")
        };
        let file = spare.file;
        let mut buf = AlignedBuf::new(BLOCK_SIZE);
        buf.set_len(BLOCK_SIZE);
        let mut samples = [Vec::new(), Vec::new()];
        let mut completions = Vec::new();
        let writes = self.config.calibration_writes.max(1);
        for i in 0..writes * 2 {
            let mode = if i % 2 == 0 {
                Durability::Dsync
            } else {
                Durability::Fdatasync
            };
            let offset = (BLOCK_SIZE * (1 + i % 16)) as u64;
            let start = self.clock.monotonic_us();
            self.io.write(file, offset, buf, mode, CALIBRATION_TOKEN);
            self.io
                .wait(1, &mut completions)
                .map_err(|e| Error::io(&self.dir, e))?;
            let completion = completions.pop().expect("one completion");
            debug_assert_eq!(completion.token, CALIBRATION_TOKEN);
            if let Err(e) = completion.result {
                self.fail(format!("calibration write failed: {e}"));
                return Err(Error::Fatal(format!("calibration write failed: {e}")));
            }
            buf = completion.buf.expect("write returns its buffer");
            samples[i % 2].push(self.clock.monotonic_us() - start);
        }
        let median = |v: &mut Vec<u64>| {
            v.sort_unstable();
            v[v.len() / 2]
        };
        let dsync_us_p50 = median(&mut samples[0]);
        let fdatasync_us_p50 = median(&mut samples[1]);
        let chosen = if dsync_us_p50 <= fdatasync_us_p50 {
            Durability::Dsync
        } else {
            Durability::Fdatasync
        };
        tracing::info!(
            dsync_us_p50,
            fdatasync_us_p50,
            ?chosen,
            "durability calibrated"
        );
        Ok(Calibration {
            dsync_us_p50,
            fdatasync_us_p50,
            writes,
            chosen,
        })
    }
}
