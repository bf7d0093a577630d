//! The raft write-ahead log: preallocated segment files of checksummed
//! records, written through io_uring with one write per batch that returns
//! once the batch is durable (the segment is opened `O_DSYNC`: the kernel's
//! write and data sync in one operation, instead of a write and an
//! `fdatasync`). Writes are direct (`O_DIRECT`) where the file system has
//! it: the kernel starts them from the submitting call instead of waking
//! io_uring's worker thread. A direct write covers whole device blocks, so
//! each sync writes the last, partly filled block again (the same bytes)
//! before the batch, and zeros after it to the block's end.
//!
//! Segments are zero-filled before use (or recycled from released ones), so
//! a sync overwrites allocated blocks and needs no metadata commit — about
//! 2.5x cheaper than appending on ext4 (perf-anchors 8.2). Each record's
//! CRC covers the segment's sequence number, so stale records left in a
//! recycled segment never read back as valid.
//!
//! The raft loop hands each `Ready`'s entries and hard state to
//! [`Wal::append_entries`] / [`Wal::append_hard_state`], which only buffer;
//! [`Wal::sync`] then writes the buffer and syncs once. At start-up
//! [`Wal::recover`] reads every segment back (stopping at the first torn or
//! zeroed record) and returns the entries and the last hard state. After the
//! state machine is checkpointed, [`Wal::release`] deletes segments whose
//! entries are all applied durably.

use std::path::{Path, PathBuf};

use glommio::io::{BufferedFile, DmaFile};
use raft::eraftpb::{Entry, EntryType, HardState};

/// Default segment size; segments are preallocated to this size.
pub const SEGMENT_SIZE: u64 = 64 << 20;
/// The first segment after a start is small, so starting stays fast; later
/// ones are prepared in the background at full size.
pub const FIRST_SEGMENT_SIZE: u64 = 16 << 20;

const REC_ENTRY: u8 = 1;
const REC_HARD_STATE: u8 = 2;
/// The first record of every segment: where the log ended before it
/// (`u64 previous segment`, `u64 byte offset` in it). Bytes after that
/// point in the previous segment are not part of the log (a torn tail that
/// a restart left behind, or a write that landed after the crash).
const REC_START: u8 = 3;
const HEADER: usize = 8;

/// WAL failures. Any of them stops the shard.
#[derive(Debug)]
pub enum Error {
    Io(std::io::Error),
    Glommio(String),
    Corrupt(String),
    /// No room for a new segment without taking the filesystem's reserve.
    NoSpace(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Io(e) => write!(f, "wal i/o: {e}"),
            Error::Glommio(e) => write!(f, "wal i/o: {e}"),
            Error::Corrupt(e) => write!(f, "wal corrupt: {e}"),
            Error::NoSpace(e) => write!(f, "no space left on device: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e)
    }
}

impl From<glommio::GlommioError<()>> for Error {
    fn from(e: glommio::GlommioError<()>) -> Error {
        Error::Glommio(e.to_string())
    }
}

type Result<T> = std::result::Result<T, Error>;

/// A segment found on disk: (sequence, path, last entry index).
pub type SegmentInfo = (u64, PathBuf, u64);

/// What recovery found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Entries in log order, later writes of an index replacing earlier ones.
    pub entries: Vec<Entry>,
    pub hard_state: Option<HardState>,
    /// Where the log ends: (segment, byte offset).
    pub end: Option<(u64, u64)>,
}

struct Segment {
    seq: u64,
    path: PathBuf,
    /// Highest entry index written to it (0 if none).
    last_index: u64,
}

/// The write side of the log.
pub struct Wal {
    dir: PathBuf,
    segment_size: u64,
    /// Size of the open segment.
    current_size: u64,
    /// Set while the next segment is being prepared in the background.
    preparing: std::rc::Rc<std::cell::Cell<bool>>,
    sealed: Vec<Segment>,
    file: Option<SegmentFile>,
    current: Segment,
    offset: u64,
    /// The bytes of the open segment's last, partly written block (from
    /// the block's start to `offset`): a direct write covers whole blocks,
    /// so the next sync writes them again, unchanged, before its records.
    tail: Vec<u8>,
    buf: Vec<u8>,
    /// Highest entry index in `buf`.
    buf_last: u64,
    /// The start record the current segment still needs (its first sync
    /// writes it first).
    start: Option<(u64, u64)>,
}

/// The open segment: direct I/O where the file system has it.
enum SegmentFile {
    /// With the unit its writes must be aligned to.
    Direct(DmaFile, usize),
    Buffered(BufferedFile),
}

impl SegmentFile {
    /// The unit a write covers: the device's logical block for direct I/O.
    fn block(&self) -> usize {
        match self {
            SegmentFile::Direct(_, block) => *block,
            SegmentFile::Buffered(_) => 512,
        }
    }

    async fn close(self) -> Result<()> {
        match self {
            SegmentFile::Direct(f, _) => f.close().await?,
            SegmentFile::Buffered(f) => f.close().await?,
        }
        Ok(())
    }
}

/// Tests can force the buffered path (the fallback's writes).
#[cfg(test)]
fn buffered_only() -> bool {
    tests::BUFFERED.with(|b| b.get())
}

#[cfg(not(test))]
fn buffered_only() -> bool {
    false
}

/// The unit direct writes to `path` must be aligned to: the larger of
/// the device's logical block (`device`, as glommio found it) and what the
/// kernel reports for the file (`statx`, Linux 6.1 and later), or `None`
/// when the kernel says the file takes no direct I/O.
fn direct_block(path: &Path, device: u64) -> Option<usize> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statx>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statx
    // buffer of the right size, which the call fills in.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            0,
            libc::STATX_DIOALIGN,
            st.as_mut_ptr(),
        )
    };
    // SAFETY: zeroed is a valid statx; the call only wrote fields into it.
    let st = unsafe { st.assume_init() };
    let device = device.max(512) as usize;
    if r != 0 || st.stx_mask & libc::STATX_DIOALIGN == 0 {
        return Some(device);
    }
    match st.stx_dio_offset_align {
        0 => None,
        a => Some(device.max(a as usize)),
    }
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

impl Wal {
    /// Read all segments in `dir` (creating it if needed), telling a torn
    /// tail from damage.
    ///
    /// A record that fails its CRC (or does not parse) ends the log only if
    /// nothing valid follows it: that is the last batch, cut short by a
    /// crash, never acknowledged; it is dropped with a warning. A valid
    /// entry record after it (in the same segment or a later one), a gap in
    /// the segment sequence, or a missing segment the log had reached (the
    /// `HEAD` file names the last segment that received records) means
    /// acknowledged writes would be lost: recovery refuses, naming the file,
    /// the byte offset and what to do. A missing `wal` folder is a
    /// deliberate restore from a store copy (docs/operations.md) and starts
    /// from the store alone.
    pub fn recover(dir: &Path) -> Result<(Recovered, Vec<SegmentInfo>)> {
        std::fs::create_dir_all(dir)?;
        let mut segs: Vec<(u64, PathBuf)> = Vec::new();
        for ent in std::fs::read_dir(dir)? {
            let ent = ent?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(hex) = name.strip_suffix(".wal") {
                if let Ok(seq) = u64::from_str_radix(hex, 16) {
                    segs.push((seq, ent.path()));
                }
            }
        }
        segs.sort();
        for w in segs.windows(2) {
            if w[1].0 != w[0].0 + 1 {
                return Err(damaged(
                    &dir.join(segment_name(w[0].0 + 1)),
                    0,
                    "this segment is missing between two others",
                ));
            }
        }
        if let Some(head) = read_head(dir)? {
            if !segs.iter().any(|(s, _)| *s == head) {
                return Err(damaged(
                    &dir.join(segment_name(head)),
                    0,
                    &format!(
                        "the log had reached this segment, but it is missing ({} segment files left)",
                        segs.len()
                    ),
                ));
            }
        }
        // Where each segment's successor says it ended.
        let mut bounds: std::collections::HashMap<u64, usize> = Default::default();
        for (seq, path) in &segs {
            if let Some((prev, end)) = start_record(*seq, path)? {
                bounds.insert(prev, end as usize);
            }
        }
        let mut rec = Recovered::default();
        let mut out = Vec::new();
        let mut last_good = 0;
        // A segment whose log ended in damage or a torn tail, and where.
        let mut ended: Option<(u64, PathBuf, usize)> = None;
        for (seq, path) in &segs {
            let mut data = std::fs::read(path)?;
            if let Some((prev, _)) = start_record(*seq, path)? {
                if ended.as_ref().is_some_and(|(s, _, _)| *s <= prev) {
                    // A later start (a restart, after recovering that end)
                    // continues the log here.
                    ended = None;
                }
            }
            if let Some((_, torn, at)) = &ended {
                // The log ended in an earlier segment: nothing valid may follow.
                if let Some(v) = find_valid(*seq, &data, 0, last_good) {
                    return Err(damaged(
                        torn,
                        *at,
                        &format!(
                            "a damaged record, yet {} holds valid records (from byte {v})",
                            path.display()
                        ),
                    ));
                }
                out.push((*seq, path.clone(), 0));
                continue;
            }
            let bound = bounds.get(seq).copied();
            if let Some(b) = bound {
                data.truncate(b);
            }
            let mut at = 0;
            let mut last = 0;
            let end = loop {
                let Some((len, rec_end)) = record_at(*seq, &data, at) else {
                    break at;
                };
                let payload = &data[at + HEADER..rec_end];
                let Ok(r) = decode(payload) else {
                    break at;
                };
                match r {
                    Record::Entry(e) => {
                        last = e.index;
                        last_good = e.index;
                        while rec.entries.last().is_some_and(|l| l.index >= e.index) {
                            rec.entries.pop();
                        }
                        if rec.entries.last().is_some_and(|l| l.index + 1 != e.index) {
                            // The store executes a batch before its entries
                            // reach the log; a crash in between leaves the
                            // log behind the store, which then resumes after
                            // its own applied index. Only the entries after
                            // the gap can matter (raft::start checks that the
                            // store has applied up to them).
                            rec.entries.clear();
                        }
                        rec.entries.push(e);
                    }
                    Record::HardState(hs) => rec.hard_state = Some(hs),
                    Record::Start => {}
                }
                at += HEADER + len;
            };
            out.push((*seq, path.clone(), last));
            if bound.is_some() {
                if end < data.len() {
                    // The log went on after this segment's recorded end.
                    return Err(damaged(
                        path,
                        end,
                        "a damaged record where the log is known to continue",
                    ));
                }
                continue;
            }
            let tail_end = data.len() - trailing_zeros(&data[end..]);
            if tail_end > end {
                if let Some(v) = find_valid(*seq, &data, end + 1, last_good) {
                    return Err(damaged(
                        path,
                        end,
                        &format!("a damaged record, yet valid records follow it (from byte {v})"),
                    ));
                }
            }
            let torn = tail_end > end && continues(&data, end, last_good);
            if end == 0 && !torn {
                // Nothing of the log here: a segment prepared in advance
                // (zeros, or the stale records of a recycled one).
                continue;
            }
            if torn {
                let len = data
                    .get(end..end + 4)
                    .map_or(0, |b| u32::from_le_bytes(b.try_into().unwrap_or_default()));
                tracing::warn!(
                    segment = %path.display(),
                    offset = end,
                    bytes = (HEADER + len as usize).min(tail_end - end),
                    "wal: torn tail dropped (the last batch, cut short by a crash; never acknowledged)"
                );
            }
            rec.end = Some((*seq, end as u64));
            ended = Some((*seq, path.clone(), end));
        }
        Ok((rec, out))
    }

    /// Open for writing, in a fresh segment after the recovered ones; its
    /// first record says where the recovered log (`end`) stopped.
    pub async fn open(
        dir: &Path,
        existing: Vec<SegmentInfo>,
        end: Option<(u64, u64)>,
        segment_size: u64,
    ) -> Result<Wal> {
        let next = existing.last().map_or(1, |s| s.0 + 1);
        let sealed = existing
            .into_iter()
            .map(|(seq, path, last_index)| Segment {
                seq,
                path,
                last_index,
            })
            .collect();
        let mut w = Wal {
            dir: dir.to_path_buf(),
            segment_size,
            current_size: 0,
            preparing: Default::default(),
            sealed,
            file: None,
            current: Segment {
                seq: next,
                path: dir.join(segment_name(next)),
                last_index: 0,
            },
            offset: 0,
            tail: Vec::new(),
            buf: Vec::with_capacity(1 << 16),
            buf_last: 0,
            start: Some(end.unwrap_or((0, 0))),
        };
        w.file = Some(
            w.create_segment(FIRST_SEGMENT_SIZE.min(segment_size))
                .await?,
        );
        w.mark_head().await?;
        w.prepare_next(None);
        Ok(w)
    }

    /// Open the current segment: the prepared next segment if it is ready
    /// (no blocking work on the write path), else a freshly zero-filled file
    /// of `size` bytes.
    async fn create_segment(&mut self, size: u64) -> Result<SegmentFile> {
        // The file may be the one being prepared right now: never fill it
        // twice (the second rename would orphan the file opened first).
        self.settle().await;
        if !self.current.path.exists() {
            let (path, dir) = (self.current.path.clone(), self.dir.clone());
            // File creation and the directory sync are blocking calls: keep
            // them off the executor. A segment never takes the filesystem's
            // reserve: without room, the shard stops writing instead.
            glommio::executor()
                .spawn_blocking(move || -> Result<()> {
                    room_for(&path, size)?;
                    zero_fill(&path, size, None)?;
                    std::fs::File::open(&dir)?.sync_all()?;
                    super::powercut::synced_dir(&dir);
                    Ok(())
                })
                .await?;
        }
        self.current_size = std::fs::metadata(&self.current.path)?.len();
        let mut open = glommio::io::OpenOptions::new();
        // Each write is durable when it returns (write + fdatasync of its
        // range in one io_uring operation).
        open.read(true).write(true).custom_flags(libc::O_DSYNC);
        // Direct I/O: the kernel starts an overwrite of allocated blocks
        // from the submitting call, without waking io_uring's worker thread
        // for it. A file system without it gets buffered writes.
        let path = &self.current.path;
        let refused = |why: &dyn std::fmt::Display| {
            tracing::warn!(path = %path.display(), %why,
                "no direct i/o for the wal; writing through the page cache");
        };
        let direct = if buffered_only() {
            None
        } else {
            match open.dma_open(path).await {
                Ok(f) => match direct_block(path, f.alignment()) {
                    Some(block) => Some(SegmentFile::Direct(f, block)),
                    None => {
                        f.close().await?;
                        refused(&"the file system reports no direct i/o alignment");
                        None
                    }
                },
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    refused(&e);
                    None
                }
                Err(e) => return Err(e.into()),
            }
        };
        match direct {
            Some(f) => Ok(f),
            None => Ok(SegmentFile::Buffered(open.buffered_open(path).await?)),
        }
    }

    fn next_path(&self) -> PathBuf {
        self.dir.join(segment_name(self.current.seq + 1))
    }

    /// Wait until no segment is being prepared (before shutting an
    /// executor down).
    pub async fn settle(&self) {
        while self.preparing.get() {
            glommio::timer::sleep(std::time::Duration::from_millis(5)).await;
        }
    }

    /// Prepare the next segment in the background, under its final name and
    /// with its directory entry synced, so a rotation only opens it: from a
    /// released segment (`recycle`; its stale records fail the CRC, which is
    /// salted with the sequence), else by zero-filling a new file.
    fn prepare_next(&self, recycle: Option<PathBuf>) {
        let next = self.next_path();
        if self.preparing.get() || next.exists() {
            if let Some(old) = recycle {
                let _ = std::fs::remove_file(old);
            }
            return;
        }
        self.preparing.set(true);
        let flag = self.preparing.clone();
        let (dir, size) = (self.dir.clone(), self.segment_size);
        glommio::spawn_local(async move {
            let r = glommio::executor()
                .spawn_blocking(move || -> Result<()> {
                    match recycle {
                        Some(old) => {
                            std::fs::rename(&old, &next)?;
                            // Its pages may be cached from a recovery's read.
                            drop_cached(&std::fs::File::open(&next)?);
                        }
                        None => {
                            // Only with room to spare: the rotation makes
                            // the segment itself if it must.
                            room_for(&next, size)?;
                            zero_fill(&next, size, Some(std::time::Duration::from_millis(10)))?
                        }
                    }
                    std::fs::File::open(&dir)?.sync_all()?;
                    super::powercut::synced_dir(&dir);
                    Ok(())
                })
                .await;
            if let Err(e) = r {
                tracing::warn!(error = %e, "the next wal segment is not prepared in advance");
            }
            flag.set(false);
        })
        .detach();
    }

    pub fn append_entries(&mut self, entries: &[Entry]) {
        for e in entries {
            let start = self.begin();
            self.buf.push(REC_ENTRY);
            self.buf.extend_from_slice(&e.term.to_le_bytes());
            self.buf.extend_from_slice(&e.index.to_le_bytes());
            self.buf.push(e.get_entry_type() as u8);
            self.buf.extend_from_slice(&e.data);
            self.finish(start);
            self.buf_last = e.index;
        }
    }

    pub fn append_hard_state(&mut self, hs: &HardState) {
        let start = self.begin();
        self.buf.push(REC_HARD_STATE);
        for v in [hs.term, hs.vote, hs.commit] {
            self.buf.extend_from_slice(&v.to_le_bytes());
        }
        self.finish(start);
    }

    fn begin(&mut self) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; HEADER]);
        start
    }

    fn finish(&mut self, start: usize) {
        let len = (self.buf.len() - start - HEADER) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    }

    /// Fill in every buffered record's CRC for the segment it will land in
    /// (known only once `sync` has decided whether to rotate).
    fn stamp(&mut self) {
        let seq = self.current.seq;
        let mut at = 0;
        while at + HEADER <= self.buf.len() {
            let len = u32::from_le_bytes(self.buf[at..at + 4].try_into().unwrap()) as usize;
            let crc = crc_of(seq, &self.buf[at + HEADER..at + HEADER + len]);
            self.buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
            at += HEADER + len;
        }
    }

    pub fn has_pending(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Write everything buffered and make it durable: one `O_DSYNC` write.
    /// Returns the bytes written.
    pub async fn sync(&mut self) -> Result<u64> {
        if self.buf.is_empty() {
            return Ok(0);
        }
        if self.offset + self.buf.len() as u64 > self.current_size && self.offset > 0 {
            self.rotate().await?;
        }
        if let Some((prev, end)) = self.start.take() {
            let mut r = Vec::with_capacity(HEADER + 17 + self.buf.len());
            r.extend_from_slice(&17u32.to_le_bytes());
            r.extend_from_slice(&[0; 4]);
            r.push(REC_START);
            r.extend_from_slice(&prev.to_le_bytes());
            r.extend_from_slice(&end.to_le_bytes());
            r.extend_from_slice(&self.buf);
            self.buf = r;
        }
        self.stamp();
        let len = self.buf.len();
        let file = self.file.as_ref().expect("wal open");
        // Whole blocks from the start of the partly written one: its
        // written bytes again (unchanged, so a torn rewrite leaves them as
        // they were), the batch, zeros to the block's end (read back as the
        // end of the log, and overwritten by the next sync).
        let block = file.block();
        let head = self.tail.len();
        let at = self.offset - head as u64;
        let end = head + len;
        let want = end.div_ceil(block) * block;
        let (tail, buf) = (&self.tail, &self.buf);
        let fill = |b: &mut [u8]| {
            b[..head].copy_from_slice(tail);
            b[head..end].copy_from_slice(buf);
            b[end..].fill(0);
        };
        let n = match file {
            SegmentFile::Direct(f, _) => {
                let mut out = f.alloc_dma_buffer(want);
                fill(out.as_bytes_mut());
                f.write_at(out, at).await?
            }
            SegmentFile::Buffered(f) => {
                let mut out = vec![0; want];
                fill(&mut out);
                f.write_at(out, at).await?
            }
        };
        if n != want {
            return Err(Error::Corrupt(format!("short wal write: {n} of {want}")));
        }
        // The new partial block: the batch's last bytes, or (a batch that
        // ended in the block it began in) the old tail and the whole batch.
        let keep = (self.offset + len as u64) as usize % block;
        if keep <= len {
            self.tail.clear();
            self.tail.extend_from_slice(&self.buf[len - keep..]);
        } else {
            self.tail.extend_from_slice(&self.buf);
        }
        debug_assert_eq!(self.tail.len(), keep);
        self.buf.clear();
        super::powercut::synced_range(&self.current.path, self.offset, len as u64);
        self.offset += len as u64;
        if self.buf_last > 0 {
            self.current.last_index = self.buf_last;
        }
        Ok(len as u64)
    }

    async fn rotate(&mut self) -> Result<()> {
        if let Some(f) = self.file.take() {
            f.close().await?;
        }
        let next = self.current.seq + 1;
        let old = std::mem::replace(
            &mut self.current,
            Segment {
                seq: next,
                path: self.dir.join(segment_name(next)),
                last_index: 0,
            },
        );
        self.start = Some((old.seq, self.offset));
        self.sealed.push(old);
        self.offset = 0;
        self.tail.clear();
        let size = self.segment_size;
        self.file = Some(self.create_segment(size).await?);
        self.mark_head().await?;
        self.prepare_next(None);
        Ok(())
    }

    /// Record that the current segment receives records from now on, before
    /// the first of them is written (recovery then knows a missing segment
    /// from a log that never reached it). Off the executor; once a segment.
    async fn mark_head(&self) -> Result<()> {
        let (dir, seq) = (self.dir.clone(), self.current.seq);
        glommio::executor()
            .spawn_blocking(move || write_head(&dir, seq))
            .await?;
        Ok(())
    }

    /// Delete sealed segments whose entries are all at or below
    /// `durable_applied` (the state machine has them on disk). A full-size
    /// one becomes the next segment instead, so rotations rarely zero-fill.
    /// File operations run off the executor.
    pub async fn release(&mut self, durable_applied: u64) -> Result<()> {
        // Only the oldest segments go, so the log on disk never has a gap in
        // its sequence (recovery treats a gap as damage). An empty segment
        // (last index 0) between kept ones waits for them.
        let current = self.current.seq;
        let n = self
            .sealed
            .iter()
            .take_while(|s| s.last_index <= durable_applied && s.seq < current)
            .count();
        let done: Vec<Segment> = self.sealed.drain(..n).collect();
        let full = self.segment_size;
        let mut paths: Vec<PathBuf> = done.into_iter().map(|s| s.path).collect();
        // Only the newest released segment may be recycled, after the older
        // ones are removed (in order): at every moment, a crash leaves a
        // contiguous run of segments on disk.
        let recycle = match paths.last() {
            Some(p) if std::fs::metadata(p).is_ok_and(|m| m.len() == full) => paths.pop(),
            _ => None,
        };
        if !paths.is_empty() {
            // The removals are made durable too: a power loss must not
            // bring released segments back (harmless, but disk not freed).
            let dir = self.dir.clone();
            glommio::executor()
                .spawn_blocking(move || -> std::io::Result<()> {
                    for p in paths {
                        std::fs::remove_file(&p)?;
                    }
                    std::fs::File::open(&dir)?.sync_all()?;
                    super::powercut::synced_dir(&dir);
                    Ok(())
                })
                .await?;
        }
        if recycle.is_some() {
            self.prepare_next(recycle);
        }
        Ok(())
    }

    /// Sealed segments still kept (not yet covered by a checkpoint).
    pub fn sealed_segments(&self) -> usize {
        self.sealed.len()
    }

    /// Bytes written to the open segment.
    pub fn offset(&self) -> u64 {
        self.offset
    }
}

/// The file naming the last segment that received records.
const HEAD: &str = "HEAD";

fn read_head(dir: &Path) -> Result<Option<u64>> {
    match std::fs::read_to_string(dir.join(HEAD)) {
        Ok(s) => Ok(u64::from_str_radix(s.trim(), 16).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Record durably that segment `seq` is about to receive records (blocking).
fn write_head(dir: &Path, seq: u64) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = dir.join("HEAD.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{seq:016x}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(HEAD))?;
    std::fs::File::open(dir)?.sync_all()?;
    super::powercut::synced_dir(dir);
    Ok(())
}

/// The start record of segment `seq` at `path`: (previous segment, its end).
fn start_record(seq: u64, path: &Path) -> Result<Option<(u64, u64)>> {
    use std::io::Read;
    let mut head = Vec::with_capacity(HEADER + 17);
    std::fs::File::open(path)?
        .take((HEADER + 17) as u64)
        .read_to_end(&mut head)?;
    let Some((17, _)) = record_at(seq, &head, 0) else {
        return Ok(None);
    };
    let p = &head[HEADER..];
    if p[0] != REC_START {
        return Ok(None);
    }
    let u = |at: usize| u64::from_le_bytes(p[at..at + 8].try_into().unwrap_or_default());
    Ok(Some((u(1), u(9))))
}

/// The error for a log that cannot be recovered without losing writes.
fn damaged(path: &Path, at: usize, what: &str) -> Error {
    Error::Corrupt(format!(
        "{} at byte {at}: {what}. Acknowledged writes would be lost, so this member does not start: \
         restore the data dir from a backup (docs/operations.md), or in a cluster remove this member \
         and add it back with an empty data dir so it catches up from the others",
        path.display()
    ))
}

/// The record of segment `seq` at `at` if it is whole and its CRC matches:
/// (payload length, end offset).
fn record_at(seq: u64, data: &[u8], at: usize) -> Option<(usize, usize)> {
    let head = data.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(head[4..8].try_into().ok()?);
    let end = at.checked_add(HEADER)?.checked_add(len)?;
    if len == 0 || end > data.len() || crc_of(seq, &data[at + HEADER..end]) != crc {
        return None;
    }
    Some((len, end))
}

/// Zero bytes at the end of `b` (a segment is zero-filled before use).
fn trailing_zeros(b: &[u8]) -> usize {
    let mut n = b.len();
    while n >= 16 && b[n - 16..n].iter().fold(0u8, |a, &x| a | x) == 0 {
        n -= 16;
    }
    while n > 0 && b[n - 1] == 0 {
        n -= 1;
    }
    b.len() - n
}

/// Whether the bytes at `at` start a record of the log being continued (an
/// entry after index `after`, or a hard state): a torn write, not zeros or
/// the stale records of a recycled segment (older indexes).
fn continues(data: &[u8], at: usize, after: u64) -> bool {
    match data.get(at + HEADER) {
        Some(&REC_ENTRY) => data
            .get(at + HEADER + 9..at + HEADER + 17)
            .is_none_or(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()) > after),
        Some(&REC_HARD_STATE) => true,
        _ => data.len() < at + HEADER && data[at..].iter().any(|&b| b != 0),
    }
}

/// The offset of a valid entry record of segment `seq` at or after `from`
/// whose index is beyond `after` (stale records of a recycled segment carry
/// older indexes and another segment's CRC salt), if there is one.
fn find_valid(seq: u64, data: &[u8], from: usize, after: u64) -> Option<usize> {
    let end = data.len() - trailing_zeros(data);
    let mut at = from;
    while at + HEADER + 18 <= end {
        // Cheap filters first: a plausible length and an entry record.
        let len = u32::from_le_bytes(data[at..at + 4].try_into().ok()?) as usize;
        if len >= 18 && at + HEADER + len <= data.len() && data[at + HEADER] == REC_ENTRY {
            let index =
                u64::from_le_bytes(data[at + HEADER + 9..at + HEADER + 17].try_into().ok()?);
            if index > after && record_at(seq, data, at).is_some() {
                return Some(at);
            }
        }
        at += 1;
    }
    None
}

/// A record's checksum: CRC-32 of the segment sequence and the payload.
fn crc_of(seq: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&seq.to_le_bytes());
    h.update(payload);
    h.finalize()
}

/// Create `path` as `size` bytes of zeros, durably (blocking; run it on a
/// blocking thread). With `pace`, it writes and syncs 1 MiB at a time with a
/// pause in between, so preparing a segment in the background never floods
/// the device queue that the WAL's own syncs wait in.
fn zero_fill(path: &Path, size: u64, pace: Option<std::time::Duration>) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let r = fill(&tmp, size, pace).and_then(|_| std::fs::rename(&tmp, path));
    if r.is_err() {
        // A full disk must not keep a half-made segment.
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Room for a new segment of `size` bytes next to `path`, leaving the
/// filesystem's reserve free (`storage::disk`).
fn room_for(path: &Path, size: u64) -> Result<()> {
    let dir = path.parent().unwrap_or(path);
    let u = crate::storage::disk::usage(dir)?;
    if u.spare() >= size {
        return Ok(());
    }
    use crate::storage::disk::human;
    Err(Error::NoSpace(format!(
        "{}: a new WAL segment needs {}, {} is free and {} stays in reserve; free space on \
         that filesystem (the segment is made at the next rotation or start)",
        path.display(),
        human(size),
        human(u.free),
        human(u.reserve())
    )))
}

fn fill(tmp: &Path, size: u64, pace: Option<std::time::Duration>) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(tmp)?;
    let zeros = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        f.write_all(&zeros[..n])?;
        left -= n as u64;
        if let Some(p) = pace {
            f.sync_data()?;
            std::thread::sleep(p);
        }
    }
    f.sync_all()?;
    drop_cached(&f);
    Ok(())
}

/// Drop a segment's pages from the page cache: direct writes never read
/// them, and each would be invalidated by the write that covers it (64 MiB
/// of zeros per prepared segment otherwise). Advice only; failure is
/// harmless.
fn drop_cached(f: &std::fs::File) {
    use std::os::fd::AsRawFd;
    // SAFETY: `f` is an open file; the call only advises the kernel.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

enum Record {
    Entry(Entry),
    HardState(HardState),
    Start,
}

fn decode(p: &[u8]) -> Result<Record> {
    let u = |at: usize| -> Result<u64> {
        p.get(at..at + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
            .ok_or_else(|| Error::Corrupt("short record".into()))
    };
    match p.first() {
        Some(&REC_ENTRY) => {
            let mut e = Entry {
                term: u(1)?,
                index: u(9)?,
                data: bytes::Bytes::copy_from_slice(p.get(18..).unwrap_or_default()),
                ..Default::default()
            };
            let ty = *p
                .get(17)
                .ok_or_else(|| Error::Corrupt("short entry".into()))?;
            e.set_entry_type(match ty {
                0 => EntryType::EntryNormal,
                1 => EntryType::EntryConfChange,
                2 => EntryType::EntryConfChangeV2,
                t => return Err(Error::Corrupt(format!("entry type {t}"))),
            });
            Ok(Record::Entry(e))
        }
        Some(&REC_START) => Ok(Record::Start),
        Some(&REC_HARD_STATE) => Ok(Record::HardState(HardState {
            term: u(1)?,
            vote: u(9)?,
            commit: u(17)?,
            ..Default::default()
        })),
        _ => Err(Error::Corrupt("unknown record type".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: bytes::Bytes::copy_from_slice(data),
            ..Default::default()
        }
    }

    #[test]
    fn write_recover_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        glommio::LocalExecutor::default().run(async move {
            let (rec, segs) = Wal::recover(&d).unwrap();
            assert!(rec.entries.is_empty());
            let mut w = Wal::open(&d, segs, None, 1 << 20).await.unwrap();
            w.append_entries(&[entry(1, 1, b"a"), entry(2, 1, b"bb")]);
            w.append_hard_state(&HardState {
                term: 1,
                commit: 2,
                ..Default::default()
            });
            w.sync().await.unwrap();
            // A rewritten index replaces the old one (leader change).
            w.append_entries(&[entry(2, 2, b"cc"), entry(3, 2, b"d")]);
            w.sync().await.unwrap();
            drop(w);
            let (rec, segs) = Wal::recover(&d).unwrap();
            let got: Vec<_> = rec
                .entries
                .iter()
                .map(|e| (e.index, e.term, e.data.to_vec()))
                .collect();
            assert_eq!(
                got,
                vec![
                    (1, 1, b"a".to_vec()),
                    (2, 2, b"cc".to_vec()),
                    (3, 2, b"d".to_vec())
                ]
            );
            assert_eq!(rec.hard_state.unwrap().commit, 2);
            // Corrupt the last record: recovery stops before it.
            let path = &segs[0].1;
            let mut data = std::fs::read(path).unwrap();
            let end = data.iter().rposition(|&b| b == b'd').unwrap();
            data[end] = b'X';
            std::fs::write(path, data).unwrap();
            let (rec, _) = Wal::recover(&d).unwrap();
            assert_eq!(rec.entries.last().unwrap().index, 2);
        });
    }

    thread_local! {
        /// Open segments without direct I/O (the fallback's write path).
        pub(super) static BUFFERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Batches from a few bytes to several blocks, in segments small
    /// enough to rotate, through direct and buffered writes: every entry
    /// reads back, although most syncs rewrite the block the last one
    /// ended in.
    #[test]
    fn batches_of_any_size_read_back_through_rewritten_blocks() {
        for buffered in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let d = dir.path().to_path_buf();
            let written = glommio::LocalExecutor::default().run(async move {
                BUFFERED.with(|b| b.set(buffered));
                let (_, segs) = Wal::recover(&d).unwrap();
                let mut w = Wal::open(&d, segs, None, 64 << 10).await.unwrap();
                let mut written = Vec::new();
                let mut seed = 7u64;
                let mut index = 0;
                for _ in 0..600 {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    for _ in 0..1 + (seed >> 60) % 3 {
                        index += 1;
                        let len = ((seed >> 33) % 1500) as usize / (1 + index as usize % 7);
                        let data = vec![b'a' + (index % 26) as u8; len];
                        w.append_entries(&[entry(index, 1, &data)]);
                        written.push((index, data));
                    }
                    w.sync().await.unwrap();
                }
                w.settle().await;
                BUFFERED.with(|b| b.set(false));
                written
            });
            let (rec, segs) = Wal::recover(dir.path()).unwrap();
            assert!(segs.len() > 3, "rotated: {} segments", segs.len());
            let got: Vec<_> = rec
                .entries
                .iter()
                .map(|e| (e.index, e.data.to_vec()))
                .collect();
            assert_eq!(got.len(), written.len(), "buffered: {buffered}");
            assert!(got == written, "buffered: {buffered}");
        }
    }

    /// Three synced batches of two entries each in a fresh segment.
    fn three_batches(d: &Path) {
        let d = d.to_path_buf();
        glommio::LocalExecutor::default().run(async move {
            let (_, segs) = Wal::recover(&d).unwrap();
            let mut w = Wal::open(&d, segs, None, 1 << 20).await.unwrap();
            for b in 0..3u64 {
                w.append_entries(&[
                    entry(b * 2 + 1, 1, b"first"),
                    entry(b * 2 + 2, 1, b"second"),
                ]);
                w.sync().await.unwrap();
            }
            w.settle().await;
        });
    }

    fn segment_with_records(d: &Path) -> PathBuf {
        let mut segs: Vec<PathBuf> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "wal"))
            .collect();
        segs.sort();
        segs.into_iter()
            .find(|p| std::fs::read(p).unwrap().iter().any(|&b| b != 0))
            .unwrap()
    }

    #[test]
    fn damage_before_the_end_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        three_batches(dir.path());
        let seg = segment_with_records(dir.path());
        let mut data = std::fs::read(&seg).unwrap();
        let at = data.windows(5).position(|w| w == b"first").unwrap();
        data[at] ^= 0x20;
        std::fs::write(&seg, &data).unwrap();
        let err = Wal::recover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("valid records follow"), "{err}");
        assert!(err.contains(&seg.display().to_string()), "{err}");
    }

    #[test]
    fn a_torn_last_record_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        three_batches(dir.path());
        let seg = segment_with_records(dir.path());
        let mut data = std::fs::read(&seg).unwrap();
        let at = data.windows(6).rposition(|w| w == b"second").unwrap();
        data[at] ^= 0x20;
        std::fs::write(&seg, &data).unwrap();
        let (rec, _) = Wal::recover(dir.path()).unwrap();
        assert_eq!(rec.entries.last().unwrap().index, 5);
        // Cut short instead: the same.
        let data = std::fs::read(&seg).unwrap();
        std::fs::write(&seg, &data[..at]).unwrap();
        let (rec, _) = Wal::recover(dir.path()).unwrap();
        assert_eq!(rec.entries.last().unwrap().index, 5);
    }

    #[test]
    fn a_restart_after_a_torn_tail_continues_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        three_batches(dir.path());
        let seg = segment_with_records(dir.path());
        let mut data = std::fs::read(&seg).unwrap();
        let at = data.windows(6).rposition(|w| w == b"second").unwrap();
        data[at] ^= 0x20;
        std::fs::write(&seg, &data).unwrap();
        let d = dir.path().to_path_buf();
        glommio::LocalExecutor::default().run(async move {
            let (rec, segs) = Wal::recover(&d).unwrap();
            assert_eq!(rec.entries.last().unwrap().index, 5);
            let mut w = Wal::open(&d, segs, rec.end, 1 << 20).await.unwrap();
            w.append_entries(&[entry(6, 2, b"after"), entry(7, 2, b"restart")]);
            w.sync().await.unwrap();
            w.settle().await;
        });
        // The torn record stays behind the recorded end of its segment; a
        // write that lands there late changes nothing either.
        let mut data = std::fs::read(&seg).unwrap();
        data[at + 1] ^= 0x20;
        std::fs::write(&seg, &data).unwrap();
        let (rec, _) = Wal::recover(dir.path()).unwrap();
        let got: Vec<u64> = rec.entries.iter().map(|e| e.index).collect();
        assert_eq!(got, vec![1, 2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn missing_segments_are_refused_a_missing_folder_is_not() {
        let dir = tempfile::tempdir().unwrap();
        three_batches(dir.path());
        let seg = segment_with_records(dir.path());
        std::fs::remove_file(&seg).unwrap();
        let err = Wal::recover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("missing"), "{err}");
        // A gap between two segments.
        let dir = tempfile::tempdir().unwrap();
        for seq in [1u64, 2, 3] {
            std::fs::write(dir.path().join(segment_name(seq)), [0u8; 64]).unwrap();
        }
        std::fs::remove_file(dir.path().join(segment_name(2))).unwrap();
        let err = Wal::recover(dir.path()).unwrap_err().to_string();
        assert!(err.contains("missing between"), "{err}");
        // No wal folder at all: a restore from a store copy.
        let dir = tempfile::tempdir().unwrap();
        let (rec, segs) = Wal::recover(&dir.path().join("wal")).unwrap();
        assert!(rec.entries.is_empty() && segs.is_empty());
    }

    #[test]
    fn rotation_recycling_and_recovery_across_many_segments() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        glommio::LocalExecutor::default().run(async move {
            let (_, segs) = Wal::recover(&d).unwrap();
            let mut w = Wal::open(&d, segs, None, 64 << 10).await.unwrap();
            let payload = vec![0xabu8; 1000];
            let mut index = 0;
            for round in 0..40 {
                let ents: Vec<Entry> = (0..10)
                    .map(|_| {
                        index += 1;
                        entry(index, 1, &payload)
                    })
                    .collect();
                w.append_entries(&ents);
                w.sync().await.unwrap();
                // Checkpoints cover everything but the last 30 entries.
                if round % 5 == 4 {
                    w.release(index - 30).await.unwrap();
                    w.settle().await;
                }
            }
            w.settle().await;
            drop(w);
            // Segments were recycled: stale records must not read back, and
            // every entry after the last release is recovered, in order.
            let (rec, segs) = Wal::recover(&d).unwrap();
            assert!(segs.len() <= 6, "released segments linger: {}", segs.len());
            let first = rec.entries.first().unwrap().index;
            assert!(
                first <= index - 30,
                "entries since the checkpoint lost (first {first})"
            );
            for (i, e) in rec.entries.iter().enumerate() {
                assert_eq!(e.index, first + i as u64);
                assert_eq!(&e.data[..], &payload[..]);
            }
            assert_eq!(rec.entries.last().unwrap().index, index);
        });
    }
}
