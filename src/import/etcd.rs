//! Reading a stopped etcd 3.4/3.5 member's data dir: the newest v2 store
//! snapshot (`member/snap/*.snap`) and the raft log after it
//! (`member/wal/*.wal`).
//!
//! Bytes enter from the files; what leaves is the snapshot's v2 store JSON
//! with its raft index, and the committed log entries after it decoded into
//! what touches the v2 store: v2 requests ([`V2Request`]) and membership
//! changes. CRC-32C checksums (etcd's) are checked: a damaged snapshot is
//! skipped for an older one, the log stops at its first damaged or torn
//! record, as etcd's own reader does at its tail. Every refusal names the
//! file and what could not be read.

use std::path::{Path, PathBuf};

use protobuf::wire_format::WireType;
use protobuf::{CodedInputStream, Message};
use raft::eraftpb::{Entry, EntryType, HardState, Snapshot};

/// WAL record types (etcd's `wal/wal.go`).
// 1 is metadata (the member and cluster ids): not needed here.
const ENTRY: i64 = 2;
const STATE: i64 = 3;
const CRC: i64 = 4;
const SNAPSHOT: i64 = 5;

/// One v2 store request from the log (etcd's `etcdserverpb.Request`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct V2Request {
    pub method: String,
    pub path: Vec<u8>,
    pub val: Vec<u8>,
    pub dir: bool,
    pub prev_value: Vec<u8>,
    pub prev_index: u64,
    pub prev_exist: Option<bool>,
    pub expiration: i64,
    pub recursive: bool,
    pub time: i64,
    pub refresh: Option<bool>,
}

/// What one committed log entry does to the v2 store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Request(V2Request),
    /// A member added (or promoted from learner): `/0/members/<id>/...`.
    AddMember(u64),
    RemoveMember(u64),
    UpdateMember(u64),
}

/// A stopped member's v2 store: the snapshot (if any) and the changes after.
pub struct Member {
    /// The v2 store JSON of the newest readable snapshot and its raft index.
    pub snapshot: Option<(u64, Vec<u8>)>,
    pub changes: Vec<Change>,
    /// Log files read and where reading stopped, for the report.
    pub notes: Vec<String>,
}

fn bad(file: &Path, what: impl std::fmt::Display) -> String {
    format!("{}: {what}", file.display())
}

fn sorted_files(dir: &Path, ext: &str) -> Result<Vec<PathBuf>, String> {
    let rd = std::fs::read_dir(dir).map_err(|e| bad(dir, e))?;
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    Ok(v)
}

/// etcd's `snappb.Snapshot { crc = 1; data = 2 }`, checked.
fn read_snap_file(file: &Path) -> Result<Snapshot, String> {
    let b = std::fs::read(file).map_err(|e| bad(file, e))?;
    let mut s = CodedInputStream::from_bytes(&b);
    let (mut crc, mut data) = (None, None);
    while !s.eof().map_err(|e| bad(file, e))? {
        let (f, wt) = s.read_tag_unpack().map_err(|e| bad(file, e))?;
        match (f, wt) {
            (1, WireType::WireTypeVarint) => crc = Some(s.read_uint32().map_err(|e| bad(file, e))?),
            (2, WireType::WireTypeLengthDelimited) => {
                data = Some(s.read_bytes().map_err(|e| bad(file, e))?)
            }
            (_, wt) => s.skip_field(wt).map_err(|e| bad(file, e))?,
        }
    }
    let (Some(crc), Some(data)) = (crc, data) else {
        return Err(bad(file, "not an etcd snapshot file (no checksum or data)"));
    };
    if crc32c::crc32c(&data) != crc {
        return Err(bad(file, "checksum mismatch (damaged snapshot)"));
    }
    Snapshot::parse_from_bytes(&data).map_err(|e| bad(file, format!("raft snapshot: {e}")))
}

/// etcd's `walpb.Record { type = 1; crc = 2; data = 3 }`.
fn read_record(b: &[u8]) -> Option<(i64, u32, Vec<u8>)> {
    let mut s = CodedInputStream::from_bytes(b);
    let (mut ty, mut crc, mut data) = (0, 0, Vec::new());
    while !s.eof().ok()? {
        let (f, wt) = s.read_tag_unpack().ok()?;
        match (f, wt) {
            (1, WireType::WireTypeVarint) => ty = s.read_int64().ok()?,
            (2, WireType::WireTypeVarint) => crc = s.read_uint32().ok()?,
            (3, WireType::WireTypeLengthDelimited) => data = s.read_bytes().ok()?,
            (_, wt) => s.skip_field(wt).ok()?,
        }
    }
    Some((ty, crc, data))
}

/// etcd's `walpb.Snapshot { index = 1; term = 2 }`: the index.
fn read_wal_snapshot(b: &[u8]) -> Option<u64> {
    let mut s = CodedInputStream::from_bytes(b);
    let mut index = 0;
    while !s.eof().ok()? {
        let (f, wt) = s.read_tag_unpack().ok()?;
        match (f, wt) {
            (1, WireType::WireTypeVarint) => index = s.read_uint64().ok()?,
            (_, wt) => s.skip_field(wt).ok()?,
        }
    }
    Some(index)
}

/// Every intact record of the log files, in order: (type, data). Only
/// the last file may end in a torn or damaged record (a write a crash cut
/// short: the bytes after it are zeros); damage anywhere else is an error,
/// as etcd refuses to start on it.
fn read_wal(dir: &Path, notes: &mut Vec<String>) -> Result<Vec<(i64, Vec<u8>)>, String> {
    let files = sorted_files(dir, "wal")?;
    if files.is_empty() {
        return Err(bad(dir, "no .wal files (is this an etcd member dir?)"));
    }
    let mut out = Vec::new();
    let mut running: u32 = 0;
    for (n, file) in files.iter().enumerate() {
        let last = n + 1 == files.len();
        let b = std::fs::read(file).map_err(|e| bad(file, e))?;
        let mut at = 0usize;
        let mut records = 0;
        // (why, where the damaged record ends if known)
        let stop: Option<(&str, usize)> = loop {
            if at + 8 > b.len() {
                break None;
            }
            let field = u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
            if field == 0 {
                // The preallocated, zero-filled rest of the segment.
                break None;
            }
            let len = (field & !(0xffu64 << 56)) as usize;
            let pad = if field >> 63 == 1 {
                ((field >> 56) & 0x7) as usize
            } else {
                0
            };
            // The length excludes the padding that follows the record.
            let end = match (at + 8).checked_add(len).and_then(|e| e.checked_add(pad)) {
                Some(e) if e <= b.len() => e,
                _ => break Some(("a torn record", b.len())),
            };
            let Some((ty, crc, data)) = read_record(&b[at + 8..at + 8 + len]) else {
                break Some(("an undecodable record", end));
            };
            if ty == CRC {
                // Each file starts with the checksum the previous one ended on.
                if running != 0 && crc != running {
                    break Some(("a checksum record that does not chain", end));
                }
                running = crc;
                at = end;
                continue;
            }
            let next = crc32c::crc32c_append(running, &data);
            if next != crc {
                break Some(("a record failing its checksum", end));
            }
            at = end;
            running = next;
            records += 1;
            out.push((ty, data));
        };
        match stop {
            None => notes.push(format!("{}: {records} record(s)", file.display())),
            Some((why, end)) => {
                let rest_zero = b[end.min(b.len())..].iter().all(|&x| x == 0);
                if !last || !rest_zero {
                    return Err(bad(
                        file,
                        format!(
                            "{why} at byte {at} with records after it: the log is damaged (etcd would not start on it either); import from a member whose log is intact, or through a live etcd with `kardia mirror`"
                        ),
                    ));
                }
                notes.push(format!(
                    "{}: {records} record(s), then {why} at byte {at} at the tail (a write cut short): reading stops there",
                    file.display()
                ));
            }
        }
    }
    Ok(out)
}

/// Read etcd's `etcdserverpb.Request`; `None` if `b` is not one.
fn read_request(b: &[u8]) -> Option<V2Request> {
    let mut s = CodedInputStream::from_bytes(b);
    let mut r = V2Request::default();
    while !s.eof().ok()? {
        let (f, wt) = s.read_tag_unpack().ok()?;
        use WireType::{WireTypeLengthDelimited as Len, WireTypeVarint as Var};
        match (f, wt) {
            (1, Var) => {
                s.read_uint64().ok()?;
            }
            (2, Len) => r.method = String::from_utf8(s.read_bytes().ok()?).ok()?,
            (3, Len) => r.path = s.read_bytes().ok()?,
            (4, Len) => r.val = s.read_bytes().ok()?,
            (5, Var) => r.dir = s.read_bool().ok()?,
            (6, Len) => r.prev_value = s.read_bytes().ok()?,
            (7, Var) => r.prev_index = s.read_uint64().ok()?,
            (8, Var) => r.prev_exist = Some(s.read_bool().ok()?),
            (9, Var) => r.expiration = s.read_int64().ok()?,
            (10, Var) | (13, Var) | (14, Var) | (16, Var) => {
                s.read_bool().ok()?;
            }
            (11, Var) => {
                s.read_uint64().ok()?;
            }
            (12, Var) => r.recursive = s.read_bool().ok()?,
            (15, Var) => r.time = s.read_int64().ok()?,
            (17, Var) => r.refresh = Some(s.read_bool().ok()?),
            _ => return None,
        }
    }
    matches!(
        r.method.as_str(),
        "PUT" | "POST" | "DELETE" | "QGET" | "GET" | "SYNC" | "HEAD"
    )
    .then_some(r)
}

/// etcd's `raftpb.ConfChange { ID = 1; Type = 2; NodeID = 3; Context = 4 }`:
/// (type, node id). Its types (0 add, 1 remove, 2 update, 3 add learner)
/// differ from raft-rs's enum, so it is read here.
fn read_conf_change(b: &[u8]) -> Option<(u64, u64)> {
    let mut s = CodedInputStream::from_bytes(b);
    let (mut ty, mut id) = (0, 0);
    while !s.eof().ok()? {
        let (f, wt) = s.read_tag_unpack().ok()?;
        match (f, wt) {
            (2, WireType::WireTypeVarint) => ty = s.read_uint64().ok()?,
            (3, WireType::WireTypeVarint) => id = s.read_uint64().ok()?,
            (_, wt) => s.skip_field(wt).ok()?,
        }
    }
    Some((ty, id))
}

/// The v2 store write an entry carries: a bare `Request` (etcd 3.4's v2
/// API), or inside an `InternalRaftRequest` its `v2` field (2) or — etcd
/// 3.5 — a cluster version (1300) or member attributes (1301) set, which
/// etcd also writes to its v2 store; `None` for the rest of v3.
fn v2_request(data: &[u8]) -> Option<V2Request> {
    if let Some(r) = read_request(data) {
        return Some(r);
    }
    let mut s = CodedInputStream::from_bytes(data);
    while !s.eof().ok()? {
        let (f, wt) = s.read_tag_unpack().ok()?;
        if wt != WireType::WireTypeLengthDelimited {
            s.skip_field(wt).ok()?;
            continue;
        }
        let inner = s.read_bytes().ok()?;
        match f {
            2 => return read_request(&inner),
            1300 => {
                return Some(V2Request {
                    method: "PUT".into(),
                    path: b"/0/version".to_vec(),
                    val: first_string(&inner, 1)?,
                    ..V2Request::default()
                })
            }
            1301 => {
                let id = first_varint(&inner, 1)?;
                return Some(V2Request {
                    method: "PUT".into(),
                    path: format!("/0/members/{id:x}/attributes").into_bytes(),
                    val: b"{}".to_vec(),
                    ..V2Request::default()
                });
            }
            _ => {}
        }
    }
    None
}

/// Field `n` of message `b`, a length-delimited one.
fn first_string(b: &[u8], n: u32) -> Option<Vec<u8>> {
    let mut s = CodedInputStream::from_bytes(b);
    while !s.eof().ok()? {
        let (f, wt) = s.read_tag_unpack().ok()?;
        if f == n && wt == WireType::WireTypeLengthDelimited {
            return s.read_bytes().ok();
        }
        s.skip_field(wt).ok()?;
    }
    Some(Vec::new())
}

/// Field `n` of message `b`, a varint.
fn first_varint(b: &[u8], n: u32) -> Option<u64> {
    let mut s = CodedInputStream::from_bytes(b);
    while !s.eof().ok()? {
        let (f, wt) = s.read_tag_unpack().ok()?;
        if f == n && wt == WireType::WireTypeVarint {
            return s.read_uint64().ok();
        }
        s.skip_field(wt).ok()?;
    }
    None
}

/// Read `etcd_dir` (the `--data-dir` of a stopped etcd member).
pub fn read(etcd_dir: &Path) -> Result<Member, String> {
    let member = etcd_dir.join("member");
    if !member.is_dir() {
        return Err(format!(
            "{}: no member/ directory: not an etcd 3.x data dir (etcd 2.x dirs: import through a live etcd with `kardia mirror`)",
            etcd_dir.display()
        ));
    }
    let mut notes = Vec::new();
    // The newest snapshot that reads; etcd keeps a few.
    let mut snapshot = None;
    let snap_dir = member.join("snap");
    if snap_dir.is_dir() {
        for file in sorted_files(&snap_dir, "snap")?.iter().rev() {
            match read_snap_file(file) {
                Ok(s) => {
                    let index = s.get_metadata().get_index();
                    notes.push(format!(
                        "{}: snapshot at raft index {index}",
                        file.display()
                    ));
                    snapshot = Some((index, s.get_data().to_vec()));
                    break;
                }
                Err(e) => notes.push(format!("{e}; trying an older snapshot")),
            }
        }
    }
    let start = snapshot.as_ref().map_or(0, |s| s.0);
    let records = read_wal(&member.join("wal"), &mut notes)?;
    // etcd's `wal.ReadAll` from the snapshot: entry i goes to position
    // i - start - 1, replacing what a new leader overwrote; a gap is an
    // error; the log must hold the snapshot's own record.
    let mut entries: Vec<Entry> = Vec::new();
    let mut commit = 0;
    let mut matched = start == 0;
    for (ty, data) in records {
        match ty {
            ENTRY => {
                let e = Entry::parse_from_bytes(&data).map_err(|e| format!("log entry: {e}"))?;
                let i = e.get_index();
                if i <= start {
                    continue;
                }
                let up = (i - start - 1) as usize;
                if up > entries.len() {
                    return Err(format!(
                        "the log skips from raft index {} to {i}: entries are missing after the snapshot at {start}",
                        start + entries.len() as u64
                    ));
                }
                entries.truncate(up);
                entries.push(e);
            }
            STATE => {
                let h =
                    HardState::parse_from_bytes(&data).map_err(|e| format!("hard state: {e}"))?;
                commit = commit.max(h.get_commit());
            }
            SNAPSHOT if read_wal_snapshot(&data) == Some(start) => matched = true,
            _ => {}
        }
    }
    if !matched {
        return Err(format!(
            "the log does not hold the record of the snapshot at raft index {start} (an older snapshot than the log's, or a purged log): import from an intact member, or through a live etcd with `kardia mirror`"
        ));
    }
    let mut changes = Vec::new();
    for e in entries {
        if e.get_index() <= start || e.get_index() > commit {
            continue;
        }
        match e.get_entry_type() {
            EntryType::EntryNormal if !e.get_data().is_empty() => {
                if let Some(r) = v2_request(e.get_data()) {
                    changes.push(Change::Request(r));
                }
            }
            EntryType::EntryConfChange => {
                let Some((ty, id)) = read_conf_change(e.get_data()) else {
                    return Err(format!(
                        "raft index {}: an unreadable membership change",
                        e.get_index()
                    ));
                };
                changes.push(match ty {
                    1 => Change::RemoveMember(id),
                    2 => Change::UpdateMember(id),
                    _ => Change::AddMember(id),
                });
            }
            EntryType::EntryConfChangeV2 => {
                return Err(format!(
                    "raft index {}: a joint-consensus membership change, which etcd 3.4/3.5 do not write; import through a live etcd with `kardia mirror`",
                    e.get_index()
                ))
            }
            _ => {}
        }
    }
    notes.push(format!(
        "{} change(s) to the v2 store after the snapshot, up to the committed raft index {commit}",
        changes.len()
    ));
    Ok(Member {
        snapshot,
        changes,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use protobuf::CodedOutputStream;

    #[test]
    fn requests_are_read_bare_or_inside_an_internal_request() {
        let mut b = Vec::new();
        {
            let mut o = CodedOutputStream::vec(&mut b);
            o.write_uint64(1, 7).unwrap();
            o.write_string(2, "PUT").unwrap();
            o.write_bytes(3, b"/1/foo").unwrap();
            o.write_bytes(4, b"bar").unwrap();
            o.write_bool(8, false).unwrap();
            o.write_int64(9, 123).unwrap();
            o.flush().unwrap();
        }
        let r = v2_request(&b).unwrap();
        assert_eq!(r.method, "PUT");
        assert_eq!(r.path, b"/1/foo");
        assert_eq!(r.val, b"bar");
        assert_eq!(r.prev_exist, Some(false));
        assert_eq!(r.expiration, 123);
        let mut inner = Vec::new();
        {
            let mut o = CodedOutputStream::vec(&mut inner);
            o.write_uint64(1, 9).unwrap();
            o.write_bytes(2, &b).unwrap();
            o.flush().unwrap();
        }
        assert_eq!(v2_request(&inner), Some(r));
        // A v3 put (field 4) is not a v2 request.
        let mut v3 = Vec::new();
        {
            let mut o = CodedOutputStream::vec(&mut v3);
            o.write_uint64(1, 9).unwrap();
            o.write_bytes(4, b"\x0a\x01k").unwrap();
            o.flush().unwrap();
        }
        assert_eq!(v2_request(&v3), None);
    }
}
