//! The machine fingerprint of a run: what two reports must share before their figures can be
//! compared (BENCHMARKS.md). Kernel, io_uring features and opcodes, CPU, memory, the disk
//! under the data directory (with its write cache: a volatile cache without FUA makes every
//! durable write a write plus a flush), the storage engine's durability calibration measured
//! on that file system, the build's git revision, and the bench's own configuration.
//!
//! Probing never fails: what cannot be read is left out and the reason is kept in
//! [`Fingerprint::probe_errors`], so a report from an unusual machine still gets written.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use chainlog_storage::{Durability, DurabilityMode, Store, StoreConfig, SystemClock, UringIo};
use io_uring::{opcode, IoUring, Probe};
use serde::Serialize;

/// The git revision of the build (`build.rs`): short hash, `-dirty` if tracked files differed
/// from it when the build script last ran, `unknown` outside a git checkout.
pub(crate) const GIT_REVISION: &str = env!("CHAINLOG_GIT_REVISION");

/// Writes per durability mode in the calibration (the store's default is 64; fewer keep the
/// probe well under a second on a slow disk while the median stays meaningful).
const CALIBRATION_WRITES: usize = 32;

/// Where a run happened and with what.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Fingerprint {
    /// chainlog-bench's version.
    pub(crate) version: &'static str,
    /// [`GIT_REVISION`].
    pub(crate) git_revision: &'static str,
    /// Seconds since the Unix epoch when the probe ran.
    pub(crate) probed_at_unix_s: u64,
    /// The host's name.
    pub(crate) hostname: Option<String>,
    /// `uname -r`.
    pub(crate) kernel_release: Option<String>,
    /// `uname -v`.
    pub(crate) kernel_version: Option<String>,
    /// The CPU architecture this binary was built for.
    pub(crate) arch: &'static str,
    /// The first `model name` of /proc/cpuinfo.
    pub(crate) cpu_model: Option<String>,
    /// Processors listed in /proc/cpuinfo.
    pub(crate) cpus: Option<usize>,
    /// Processors this process may run on (cgroup and affinity limits applied).
    pub(crate) cpus_available: Option<usize>,
    /// `MemTotal` of /proc/meminfo, bytes.
    pub(crate) memory_bytes: Option<u64>,
    /// What the kernel's io_uring offers.
    pub(crate) io_uring: Option<IoUringFeatures>,
    /// The file system and disk under the data directory.
    pub(crate) disk: Option<Disk>,
    /// The storage engine's durability calibration, measured on that file system.
    pub(crate) calibration: Option<CalibrationProbe>,
    /// The bench's configuration (its arguments, defaults filled in); `null` until the caller
    /// sets it.
    pub(crate) config: serde_json::Value,
    /// What could not be probed, and why.
    pub(crate) probe_errors: BTreeMap<&'static str, String>,
}

/// io_uring setup features and the opcodes the bench and the node use.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct IoUringFeatures {
    /// IORING_FEAT_NODROP: completions are never dropped when the CQ ring is full.
    pub(crate) nodrop: bool,
    /// IORING_FEAT_FAST_POLL: internal polling instead of worker threads for sockets.
    pub(crate) fast_poll: bool,
    /// IORING_FEAT_SUBMIT_STABLE: submitted data need not outlive the submit call.
    pub(crate) submit_stable: bool,
    /// IORING_FEAT_EXT_ARG: waits with a timeout without an extra SQE.
    pub(crate) ext_arg: bool,
    /// IORING_FEAT_NATIVE_WORKERS: io-wq workers are native threads.
    pub(crate) native_workers: bool,
    /// Opcodes supported, by name (`IORING_REGISTER_PROBE`).
    pub(crate) opcodes: BTreeMap<&'static str, bool>,
}

/// The block device under a directory.
#[derive(Clone, Debug, Default, Serialize)]
pub(crate) struct Disk {
    /// The directory probed.
    pub(crate) dir: PathBuf,
    /// Its file system type (/proc/self/mountinfo).
    pub(crate) filesystem: Option<String>,
    /// Its mount point.
    pub(crate) mount_point: Option<String>,
    /// Block device name of the whole disk (`vda`, `nvme0n1`), if the file system has one.
    pub(crate) device: Option<String>,
    /// Partition name, if the file system is on one.
    pub(crate) partition: Option<String>,
    /// `device/model` (absent on virtio disks).
    pub(crate) model: Option<String>,
    /// `device/vendor` (`0x1af4` is virtio).
    pub(crate) vendor: Option<String>,
    /// `queue/rotational`: a spinning disk.
    pub(crate) rotational: Option<bool>,
    /// `queue/write_cache`: `write back` (volatile cache, flushes needed) or `write through`.
    pub(crate) write_cache: Option<String>,
    /// `queue/fua`: the device honours force-unit-access writes.
    pub(crate) fua: Option<bool>,
    /// `queue/scheduler`, the active one.
    pub(crate) scheduler: Option<String>,
    /// Disk size, bytes.
    pub(crate) size_bytes: Option<u64>,
}

/// The outcome of the storage engine's durability calibration on a scratch store.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct CalibrationProbe {
    /// Where the scratch store was (removed afterwards).
    pub(crate) dir: PathBuf,
    /// Median latency of a 4 KiB `RWF_DSYNC` write, microseconds.
    pub(crate) dsync_us_p50: u64,
    /// Median latency of a 4 KiB write linked to fdatasync, microseconds.
    pub(crate) fdatasync_us_p50: u64,
    /// Writes measured per mode.
    pub(crate) writes: usize,
    /// The mode a store opened here would use (`dsync` or `fdatasync`).
    pub(crate) chosen: &'static str,
    /// How long opening, calibrating and removing the scratch store took, milliseconds.
    pub(crate) probe_ms: u64,
}

impl Fingerprint {
    /// Probes this machine, with the disk and calibration of `data_dir` (the node's or the
    /// store's data directory; the system's temporary directory if `None`). Runs the storage
    /// engine's calibration on a scratch store in a temporary directory next to `data_dir`
    /// (see [`scratch_parent`]; a few hundred small durable writes, well under a second
    /// here).
    pub(crate) fn probe(data_dir: Option<&Path>) -> Fingerprint {
        let mut errors = BTreeMap::new();
        let mut note = |what: &'static str, result: Result<(), String>| {
            if let Err(e) = result {
                errors.insert(what, e);
            }
        };
        let read = |path: &str| read_trimmed(Path::new(path));
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let dir = data_dir.map_or_else(std::env::temp_dir, existing_ancestor);
        let io_uring = io_uring_features();
        let disk = disk_of(&dir);
        // Without a data directory the scratch store goes in the temp dir itself (its parent
        // would be `/`).
        let calibration = calibrate(&match data_dir {
            Some(_) => scratch_parent(&dir),
            None => dir.clone(),
        });
        let fingerprint = Fingerprint {
            version: env!("CARGO_PKG_VERSION"),
            git_revision: GIT_REVISION,
            probed_at_unix_s: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            hostname: read("/proc/sys/kernel/hostname"),
            kernel_release: read("/proc/sys/kernel/osrelease"),
            kernel_version: read("/proc/sys/kernel/version"),
            arch: std::env::consts::ARCH,
            cpu_model: cpu_model(&cpuinfo),
            cpus: cpu_count(&cpuinfo),
            cpus_available: std::thread::available_parallelism().ok().map(usize::from),
            memory_bytes: std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| mem_total_bytes(&m)),
            io_uring: io_uring.as_ref().ok().cloned(),
            disk: disk.as_ref().ok().cloned(),
            calibration: calibration.as_ref().ok().cloned(),
            config: serde_json::Value::Null,
            probe_errors: BTreeMap::new(),
        };
        note("io_uring", io_uring.map(drop));
        note("disk", disk.map(drop));
        note("calibration", calibration.map(drop));
        Fingerprint {
            probe_errors: errors,
            ..fingerprint
        }
    }

    /// The fingerprint as (name, value) rows for a table (the bench config excepted: it is
    /// structured, the caller shows it as JSON).
    pub(crate) fn rows(&self) -> Vec<(&'static str, String)> {
        let or_unknown = |v: &Option<String>| v.clone().unwrap_or_else(|| "unknown".into());
        let mut rows = vec![
            (
                "chainlog-bench",
                format!("{} ({})", self.version, self.git_revision),
            ),
            ("host", or_unknown(&self.hostname)),
            (
                "kernel",
                format!(
                    "{} {} ({})",
                    or_unknown(&self.kernel_release),
                    or_unknown(&self.kernel_version),
                    self.arch
                ),
            ),
            (
                "CPU",
                format!(
                    "{} × {}, {} available to this process",
                    self.cpus.map_or("?".into(), |n| n.to_string()),
                    or_unknown(&self.cpu_model),
                    self.cpus_available.map_or("?".into(), |n| n.to_string()),
                ),
            ),
            (
                "memory",
                self.memory_bytes.map_or("unknown".into(), |b| {
                    format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64)
                }),
            ),
        ];
        if let Some(f) = &self.io_uring {
            let yes_no = |b: bool| if b { "yes" } else { "no" };
            rows.push((
                "io_uring features",
                format!(
                    "nodrop {}, fast_poll {}, submit_stable {}, ext_arg {}, native_workers {}",
                    yes_no(f.nodrop),
                    yes_no(f.fast_poll),
                    yes_no(f.submit_stable),
                    yes_no(f.ext_arg),
                    yes_no(f.native_workers),
                ),
            ));
            let list = |supported: bool| {
                let names: Vec<&str> = f
                    .opcodes
                    .iter()
                    .filter(|(_, s)| **s == supported)
                    .map(|(name, _)| *name)
                    .collect();
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            };
            rows.push(("io_uring opcodes supported", list(true)));
            rows.push(("io_uring opcodes missing", list(false)));
        }
        if let Some(d) = &self.disk {
            rows.push((
                "data directory",
                format!(
                    "{} ({} on {})",
                    d.dir.display(),
                    or_unknown(&d.filesystem),
                    or_unknown(&d.mount_point)
                ),
            ));
            let mut disk = or_unknown(&d.device);
            if let Some(p) = &d.partition {
                disk.push_str(&format!(" (partition {p})"));
            }
            match (&d.model, &d.vendor) {
                (Some(m), _) => disk.push_str(&format!(", model {m}")),
                (None, Some(v)) => disk.push_str(&format!(", vendor {v}")),
                (None, None) => {}
            }
            if let Some(size) = d.size_bytes {
                disk.push_str(&format!(", {:.0} GiB", size as f64 / (1u64 << 30) as f64));
            }
            if let Some(r) = d.rotational {
                disk.push_str(if r {
                    ", reported rotational"
                } else {
                    ", non-rotational"
                });
            }
            rows.push(("disk", disk));
            rows.push((
                "disk write cache",
                format!(
                    "{}, FUA {}, scheduler {}",
                    or_unknown(&d.write_cache),
                    d.fua.map_or("unknown", |f| if f { "yes" } else { "no" }),
                    or_unknown(&d.scheduler),
                ),
            ));
        }
        if let Some(c) = &self.calibration {
            rows.push((
                "durability calibration",
                format!(
                    "4 KiB write p50: RWF_DSYNC {} µs, write + fdatasync {} µs ({} writes each) \
                     → {}",
                    c.dsync_us_p50, c.fdatasync_us_p50, c.writes, c.chosen
                ),
            ));
        }
        for (what, why) in &self.probe_errors {
            rows.push(("not probed", format!("{what}: {why}")));
        }
        rows
    }
}

/// A small sysfs or procfs file, trimmed; `None` if it is missing or empty.
fn read_trimmed(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// The value of the first `model name` line of /proc/cpuinfo.
fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_string())
}

/// The number of `processor` entries of /proc/cpuinfo.
fn cpu_count(cpuinfo: &str) -> Option<usize> {
    let n = cpuinfo
        .lines()
        .filter(|l| l.split(':').next().is_some_and(|k| k.trim() == "processor"))
        .count();
    (n > 0).then_some(n)
}

/// `MemTotal` of /proc/meminfo (given in kB), bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Sets up a small ring and asks the kernel what it offers.
fn io_uring_features() -> Result<IoUringFeatures, String> {
    let ring = IoUring::new(8).map_err(|e| format!("setting up a ring: {e}"))?;
    let params = ring.params();
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("IORING_REGISTER_PROBE: {e}"))?;
    let opcodes = [
        ("Read", opcode::Read::CODE),
        ("Write", opcode::Write::CODE),
        ("Fsync", opcode::Fsync::CODE),
        ("Fallocate", opcode::Fallocate::CODE),
        ("Accept", opcode::Accept::CODE),
        ("Send", opcode::Send::CODE),
        ("Recv", opcode::Recv::CODE),
        ("SendZc", opcode::SendZc::CODE),
        ("Timeout", opcode::Timeout::CODE),
    ]
    .into_iter()
    .map(|(name, code)| (name, probe.is_supported(code)))
    .collect();
    Ok(IoUringFeatures {
        nodrop: params.is_feature_nodrop(),
        fast_poll: params.is_feature_fast_poll(),
        submit_stable: params.is_feature_submit_stable(),
        ext_arg: params.is_feature_ext_arg(),
        native_workers: params.is_feature_native_workers(),
        opcodes,
    })
}

/// Linux's `dev_t` split into major and minor numbers (glibc's encoding).
fn major_minor(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// The mount of device `major:minor` in /proc/self/mountinfo: (mount point, file system type).
/// When several mounts share the device, the one with the longest mount point that contains
/// `dir` wins (bind mounts).
fn mount_of(mountinfo: &str, major_minor: &str, dir: &Path) -> Option<(String, String)> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fields: Vec<&str> = left.split_whitespace().collect();
            let filesystem = right.split_whitespace().next()?;
            let mount_point = fields.get(4)?;
            (fields.get(2) == Some(&major_minor))
                .then(|| (mount_point.to_string(), filesystem.to_string()))
        })
        .filter(|(mount_point, _)| dir.starts_with(mount_point))
        .max_by_key(|(mount_point, _)| mount_point.len())
}

/// The file system and block device under `dir`.
fn disk_of(dir: &Path) -> Result<Disk, String> {
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("resolving {}: {e}", dir.display()))?;
    let dev = std::fs::metadata(&dir)
        .map_err(|e| format!("stat {}: {e}", dir.display()))?
        .dev();
    let (major, minor) = major_minor(dev);
    let numbers = format!("{major}:{minor}");
    let mut disk = Disk {
        dir: dir.clone(),
        ..Disk::default()
    };
    if let Some((mount_point, filesystem)) = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|m| mount_of(&m, &numbers, &dir))
    {
        disk.mount_point = Some(mount_point);
        disk.filesystem = Some(filesystem);
    }
    // /sys/dev/block/MAJ:MIN links to the device's sysfs directory: a whole disk, or a
    // partition inside its disk's directory. Virtual file systems (overlay, tmpfs) have none.
    let Ok(sys) = Path::new("/sys/dev/block").join(&numbers).canonicalize() else {
        return Ok(disk);
    };
    let name = |p: &Path| p.file_name().map(|n| n.to_string_lossy().into_owned());
    let whole = if sys.join("partition").exists() {
        disk.partition = name(&sys);
        sys.parent().map(Path::to_path_buf).unwrap_or(sys)
    } else {
        sys
    };
    disk.device = name(&whole);
    disk.model = read_trimmed(&whole.join("device/model"));
    disk.vendor = read_trimmed(&whole.join("device/vendor"));
    let queue = |file: &str| read_trimmed(&whole.join("queue").join(file));
    disk.rotational = queue("rotational").map(|r| r == "1");
    disk.write_cache = queue("write_cache");
    disk.fua = queue("fua").map(|f| f == "1");
    disk.scheduler = queue("scheduler").and_then(|s| active_scheduler(&s));
    // `size` counts 512-byte sectors, whatever the device's block size.
    disk.size_bytes = read_trimmed(&whole.join("size"))
        .and_then(|s| s.parse::<u64>().ok())
        .map(|sectors| sectors * 512);
    Ok(disk)
}

/// The bracketed entry of `queue/scheduler` (`none [mq-deadline] kyber` → `mq-deadline`).
fn active_scheduler(line: &str) -> Option<String> {
    let start = line.find('[')?;
    let end = line[start..].find(']')? + start;
    Some(line[start + 1..end].to_string())
}

/// A store configuration for calibrating only: durability `auto`, and small buffers and
/// segments where the engine's limits allow (the calibration writes into the spare segment's
/// first blocks; two preallocated segments of 64 MiB would cost more than the measurement).
fn scratch_config() -> StoreConfig {
    let base = StoreConfig {
        durability: DurabilityMode::Auto,
        calibration_writes: CALIBRATION_WRITES,
        ..StoreConfig::default()
    };
    let small = StoreConfig {
        segment_bytes: 2 << 20,
        batch_bytes_max: 256 << 10,
        record_bytes_max: 4 << 10,
        writes_in_flight_max: 1,
        write_buffers: 4,
        logs_max: 16,
        ..base.clone()
    };
    if small.validate().is_ok() {
        return small;
    }
    // The defaults' frame size, with the smallest segments and buffer count that allow it.
    StoreConfig {
        segment_bytes: 4 * base.batch_bytes_max as u64,
        write_buffers: base.writes_in_flight_max + 3,
        ..base
    }
}

/// `path` if it exists, else its nearest ancestor that does (a data directory that a run is
/// about to create will be on that one's file system).
fn existing_ancestor(path: &Path) -> PathBuf {
    path.ancestors()
        .find(|p| p.exists())
        .unwrap_or(path)
        .to_path_buf()
}

/// Where the calibration's scratch store goes: beside `data_dir` (in its parent) when that is
/// on the same file system, so that nothing appears inside a data directory that a store or
/// node may be using (a store refuses to open next to files it does not know, and a killed
/// probe would leave its scratch directory behind); in `data_dir` itself when it is a mount
/// point or has no parent.
fn scratch_parent(data_dir: &Path) -> PathBuf {
    let device = |p: &Path| std::fs::metadata(p).ok().map(|m| m.dev());
    let Ok(dir) = data_dir.canonicalize() else {
        return data_dir.to_path_buf();
    };
    match dir.parent() {
        Some(parent) if device(parent).is_some() && device(parent) == device(&dir) => {
            parent.to_path_buf()
        }
        _ => dir,
    }
}

/// The storage engine's own calibration (`chainlog_storage::calibrate`), run by opening a
/// small scratch store with durability `auto` in a temporary directory under `dir`.
fn calibrate(dir: &Path) -> Result<CalibrationProbe, String> {
    let started = Instant::now();
    let scratch = tempfile::Builder::new()
        .prefix("chainlog-fingerprint-")
        .tempdir_in(dir)
        .map_err(|e| format!("creating a scratch directory in {}: {e}", dir.display()))?;
    let config = scratch_config();
    let io = UringIo::new(16).map_err(|e| format!("setting up io_uring: {e}"))?;
    let store = Store::open(io, scratch.path(), config, Arc::new(SystemClock::new()))
        .map_err(|e| format!("opening a scratch store: {e}"))?;
    let calibration = store
        .calibration()
        .cloned()
        .ok_or("the scratch store did not calibrate")?;
    drop(store);
    let dir = scratch.path().to_path_buf();
    scratch
        .close()
        .map_err(|e| format!("removing {}: {e}", dir.display()))?;
    Ok(CalibrationProbe {
        dir,
        dsync_us_p50: calibration.dsync_us_p50,
        fdatasync_us_p50: calibration.fdatasync_us_p50,
        writes: calibration.writes,
        chosen: match calibration.chosen {
            Durability::Dsync => "dsync",
            Durability::Fdatasync => "fdatasync",
            Durability::Buffered => "buffered",
        },
        probe_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn parses_proc_files() {
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t: fpu\n\n\
                       processor\t: 1\nmodel name\t: AMD EPYC\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC"));
        assert_eq!(cpu_count(cpuinfo), Some(2));
        assert_eq!(cpu_count(""), None);
        let meminfo = "MemTotal:       24684092 kB\nMemFree:         1000 kB\n";
        assert_eq!(mem_total_bytes(meminfo), Some(24_684_092 * 1024));
        assert_eq!(
            active_scheduler("none [mq-deadline] kyber bfq").as_deref(),
            Some("mq-deadline")
        );
        assert_eq!(active_scheduler("none"), None);
    }

    #[test]
    fn splits_device_numbers_and_finds_the_mount() {
        assert_eq!(major_minor(0xfe00), (254, 0));
        // makedev(259, 4097): the minor number's high bits sit above the major's low ones.
        assert_eq!(major_minor(0x0101_0301), (259, 4097));
        let mountinfo = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                         27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                         50 27 254:0 /data /srv/data rw,relatime - ext4 /dev/vda rw\n";
        assert_eq!(
            mount_of(mountinfo, "254:0", Path::new("/srv/data/x")),
            Some(("/srv/data".into(), "ext4".into()))
        );
        assert_eq!(
            mount_of(mountinfo, "254:0", Path::new("/tmp")),
            Some(("/".into(), "ext4".into()))
        );
        assert_eq!(mount_of(mountinfo, "8:1", Path::new("/tmp")), None);
    }

    #[test]
    fn the_scratch_store_goes_beside_the_data_directory() {
        let parent = tempfile::tempdir().unwrap();
        let data = parent.path().join("data");
        std::fs::create_dir(&data).unwrap();
        assert_eq!(scratch_parent(&data), parent.path().canonicalize().unwrap());
        // Not there yet: the nearest directory that is.
        let missing = parent.path().join("missing/too");
        assert_eq!(existing_ancestor(&missing), parent.path());
        assert_eq!(existing_ancestor(&data), data);
        assert_eq!(scratch_parent(Path::new("/")), PathBuf::from("/"));
    }

    #[test]
    fn probe_fills_what_this_machine_has() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let f = Fingerprint::probe(Some(dir.path()));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "probe is cheap"
        );
        assert!(f.kernel_release.is_some(), "{:?}", f.probe_errors);
        assert!(f.cpus.unwrap_or(0) >= 1);
        assert!(f.memory_bytes.unwrap_or(0) > 0);
        let disk = f
            .disk
            .as_ref()
            .expect("the disk of a directory that exists");
        assert!(disk.filesystem.is_some());
        // The calibration needs io_uring and O_DIRECT; where it runs, its medians are real.
        if let Some(c) = &f.calibration {
            assert_eq!(c.dir.parent(), dir.path().canonicalize().unwrap().parent());
            assert!(c.dsync_us_p50 > 0 && c.fdatasync_us_p50 > 0);
            assert_eq!(c.writes, CALIBRATION_WRITES);
            assert!(!c.dir.exists(), "the scratch store is removed");
        } else {
            assert!(f.probe_errors.contains_key("calibration"));
        }
        let rows = f.rows();
        assert!(rows.iter().any(|(k, _)| *k == "kernel"));
        let json = serde_json::to_value(&f).unwrap();
        assert!(json["kernel_release"].is_string());
        assert!(json.get("config").is_some());
    }
}
