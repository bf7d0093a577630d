//! Snapshot files on the peer wire, streamed in bounded chunks.
//!
//! A snapshot for a lagging follower is a compacted copy of the leader's
//! LMDB file on disk. The raft message that carries it (`MsgSnapshot`)
//! holds only a [`Descriptor`] (length, CRC-32 and the local path of the
//! file), never the bytes: the leader's peer writer streams the file ahead
//! of the message as [`KIND_SNAP_CHUNK`] frames of at most [`CHUNK`] bytes
//! ([`send_file`]), and the follower's peer reader appends them to a file of
//! its own ([`Incoming`]), checking length and CRC before the message is
//! handed to raft with a descriptor of the received file. Memory on both
//! sides is one chunk, whatever the store's size.

use std::path::{Path, PathBuf};

use futures_lite::AsyncWriteExt;
use glommio::io::BufferedFile;

/// A chunk of a snapshot file: `u64 offset`, then bytes.
pub const KIND_SNAP_CHUNK: u8 = 6;
/// Local to a peer queue, never sent: "stream this file here" (`u64 len`,
/// then the path).
pub const KIND_SNAP_FILE: u8 = 7;
/// Bytes per chunk frame.
pub const CHUNK: usize = 1 << 20;

const MAGIC: &[u8; 4] = b"KSNP";

/// What a `MsgSnapshot`'s data says about its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    pub len: u64,
    pub crc: u32,
    /// Where the file is on this member.
    pub path: PathBuf,
}

impl Descriptor {
    pub fn encode(&self) -> Vec<u8> {
        let path = self.path.to_string_lossy();
        let mut out = Vec::with_capacity(16 + path.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.len.to_le_bytes());
        out.extend_from_slice(&self.crc.to_le_bytes());
        out.extend_from_slice(path.as_bytes());
        out
    }

    /// `None` when `b` is not a descriptor.
    pub fn decode(b: &[u8]) -> Option<Descriptor> {
        let rest = b.strip_prefix(MAGIC)?;
        let len = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let crc = u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?);
        let path = std::str::from_utf8(rest.get(12..)?).ok()?;
        Some(Descriptor {
            len,
            crc,
            path: PathBuf::from(path),
        })
    }

    /// Describe the file at `path` (length and CRC-32, read in chunks).
    /// Blocking: call it off the executor.
    pub fn of_file(path: &Path) -> std::io::Result<Descriptor> {
        use std::io::Read;
        let mut f = std::fs::File::open(path)?;
        let mut h = crc32fast::Hasher::new();
        let mut buf = vec![0u8; CHUNK];
        let mut len = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            len += n as u64;
        }
        Ok(Descriptor {
            len,
            crc: h.finalize(),
            path: path.to_path_buf(),
        })
    }
}

/// The queue entry that makes a peer writer stream `d`'s file.
pub fn file_frame(d: &Descriptor) -> Vec<u8> {
    let path = d.path.to_string_lossy();
    let mut f = Vec::with_capacity(13 + path.len());
    f.extend_from_slice(&((9 + path.len()) as u32).to_le_bytes());
    f.push(KIND_SNAP_FILE);
    f.extend_from_slice(&d.len.to_le_bytes());
    f.extend_from_slice(path.as_bytes());
    f
}

/// Inverse of [`file_frame`] (the whole frame, prefix included).
pub fn decode_file_frame(f: &[u8]) -> Option<(u64, PathBuf)> {
    if f.get(4) != Some(&KIND_SNAP_FILE) {
        return None;
    }
    let len = u64::from_le_bytes(f.get(5..13)?.try_into().ok()?);
    let path = std::str::from_utf8(f.get(13..)?).ok()?;
    Some((len, PathBuf::from(path)))
}

/// Stream the first `len` bytes of the file at `path` to `s` as chunk
/// frames.
pub async fn send_file<W: futures_lite::AsyncWrite + Unpin>(
    s: &mut W,
    path: &Path,
    len: u64,
) -> std::io::Result<()> {
    let f = BufferedFile::open(path).await?;
    let mut at = 0u64;
    let mut frame = Vec::with_capacity(13 + CHUNK);
    while at < len {
        let want = CHUNK.min((len - at) as usize);
        let data = f.read_at(at, want).await?;
        if data.is_empty() {
            let _ = f.close().await;
            return Err(std::io::Error::other(
                "snapshot file shorter than described",
            ));
        }
        frame.clear();
        frame.extend_from_slice(&((9 + data.len()) as u32).to_le_bytes());
        frame.push(KIND_SNAP_CHUNK);
        frame.extend_from_slice(&at.to_le_bytes());
        frame.extend_from_slice(&data);
        s.write_all(&frame).await?;
        at += data.len() as u64;
    }
    let _ = f.close().await;
    Ok(())
}

/// A snapshot file arriving from one peer connection.
#[derive(Default)]
pub struct Incoming {
    file: Option<BufferedFile>,
    path: PathBuf,
    written: u64,
    crc: crc32fast::Hasher,
}

impl Incoming {
    /// Take one chunk frame's body (`kind`, `u64 offset`, bytes). A chunk
    /// at offset 0 starts a new file in `dir`; chunks must arrive in order.
    pub async fn chunk(&mut self, dir: &Path, body: &[u8]) -> Result<(), String> {
        let at = body
            .get(1..9)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or("short snapshot chunk")?;
        let data = &body[9..];
        if at == 0 {
            self.discard().await;
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            self.path = dir.join(format!("incoming-{}.mdb", crate::raft::wall_nanos()));
            let f = BufferedFile::create(&self.path)
                .await
                .map_err(|e| format!("{}: {e}", self.path.display()))?;
            self.file = Some(f);
        }
        let Some(f) = &self.file else {
            return Err("snapshot chunk without a start".into());
        };
        if at != self.written {
            return Err(format!("snapshot chunk at {at}, expected {}", self.written));
        }
        f.write_at(data.to_vec(), at)
            .await
            .map_err(|e| format!("{}: {e}", self.path.display()))?;
        self.crc.update(data);
        self.written += data.len() as u64;
        Ok(())
    }

    /// The message describing the file arrived: check what was received
    /// against it, make it durable, and return the descriptor of the file
    /// here.
    pub async fn finish(&mut self, sent: &Descriptor) -> Result<Descriptor, String> {
        let Some(f) = self.file.take() else {
            return Err("snapshot message without its file".into());
        };
        let crc = std::mem::take(&mut self.crc).finalize();
        let written = std::mem::take(&mut self.written);
        let ok = written == sent.len && crc == sent.crc;
        let synced = f.fdatasync().await;
        let _ = f.close().await;
        if !ok {
            let _ = std::fs::remove_file(&self.path);
            return Err(format!(
                "snapshot file damaged in transit: {written} bytes (crc {crc:08x}), expected {} (crc {:08x})",
                sent.len, sent.crc
            ));
        }
        synced.map_err(|e| format!("{}: {e}", self.path.display()))?;
        Ok(Descriptor {
            len: written,
            crc,
            path: std::mem::take(&mut self.path),
        })
    }

    /// Drop a partly received file (the connection ended, or a new one
    /// starts).
    pub async fn discard(&mut self) {
        if let Some(f) = self.file.take() {
            let _ = f.close().await;
            let _ = std::fs::remove_file(&self.path);
        }
        self.written = 0;
        self.crc = crc32fast::Hasher::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptor_and_file_frame_round_trip() {
        let d = Descriptor {
            len: 123_456_789,
            crc: 0xdead_beef,
            path: PathBuf::from("/var/lib/kardia/shard-0/snap/send/5-2.mdb"),
        };
        assert_eq!(Descriptor::decode(&d.encode()), Some(d.clone()));
        assert_eq!(decode_file_frame(&file_frame(&d)), Some((d.len, d.path)));
        assert_eq!(Descriptor::decode(b"KSNP\x01"), None);
        assert_eq!(Descriptor::decode(b"not a descriptor at all"), None);
    }
}
