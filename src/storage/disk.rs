//! Free space on the data dir's filesystem, and file blocks allocated ahead
//! of use.
//!
//! Everything that takes disk before it needs it — a WAL segment prepared in
//! advance, the store's map allocated ahead of LMDB (`store::space`) — asks
//! [`usage`] first and leaves the filesystem's [`Usage::reserve`] free, so a
//! preallocation never takes the last free space and the small writes that
//! must still succeed (the WAL's `HEAD`, LMDB's meta pages) find room. Data
//! enters as paths and open files; it leaves as byte counts and allocated
//! ranges. Every call here is blocking (`statvfs`, `fallocate`): run it on a
//! blocking thread, or at start-up before the executors serve.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Space on one filesystem, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Usage {
    /// Free for an unprivileged writer (`f_bavail`).
    pub free: u64,
    pub total: u64,
}

impl Usage {
    /// What no preallocation may take: 1/50 of the filesystem, at least
    /// 1 MiB and at most 64 MiB.
    pub fn reserve(&self) -> u64 {
        (self.total / 50).clamp(1 << 20, 64 << 20)
    }

    /// Free space a preallocation may take.
    pub fn spare(&self) -> u64 {
        self.free.saturating_sub(self.reserve())
    }
}

/// The space on the filesystem holding `path`.
pub fn usage(path: &Path) -> io::Result<Usage> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path, `st` is written by the call.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: statvfs succeeded, so `st` is initialised.
    let st = unsafe { st.assume_init() };
    let unit = st.f_frsize;
    Ok(Usage {
        free: st.f_bavail * unit,
        total: st.f_blocks * unit,
    })
}

/// Allocate the blocks of `file` in `[offset, offset + len)` (`fallocate`,
/// mode 0: holes get blocks, data is kept, the size grows only if the range
/// ends past it). Fails with `ENOSPC` when the filesystem cannot, and with
/// `EOPNOTSUPP` on a filesystem without `fallocate`.
pub fn allocate(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    loop {
        // SAFETY: a plain syscall on an open descriptor.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, offset as i64, len as i64) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The error a full filesystem gives.
pub fn is_no_space(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ENOSPC) || e.raw_os_error() == Some(libc::EDQUOT)
}

/// Bytes as an operator reads them (`12.5 MiB`).
pub fn human(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (MIB * 1024.0))
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_is_a_fiftieth_within_bounds() {
        let u = |total| Usage { free: 0, total };
        assert_eq!(u(20 << 20).reserve(), 1 << 20);
        assert_eq!(u(1 << 30).reserve(), (1 << 30) / 50);
        assert_eq!(u(1 << 40).reserve(), 64 << 20);
        let s = Usage {
            free: 5 << 20,
            total: 20 << 20,
        };
        assert_eq!(s.spare(), 4 << 20);
    }

    #[test]
    fn usage_and_allocate_on_a_real_file() {
        let dir = tempfile::tempdir().unwrap();
        let u = usage(dir.path()).unwrap();
        assert!(u.total > 0 && u.free <= u.total);
        let f = File::create(dir.path().join("f")).unwrap();
        f.set_len(1 << 20).unwrap();
        match allocate(&f, 0, 1 << 20) {
            Ok(()) => assert_eq!(f.metadata().unwrap().len(), 1 << 20),
            Err(e) => assert_eq!(e.raw_os_error(), Some(libc::EOPNOTSUPP)),
        }
    }
}
