//! Snapshots for lagging followers: a consistent copy of the shard's LMDB
//! store, made off the executor when raft asks for one
//! ([`prepare_snapshot`]) and kept on disk — the raft message carries only
//! its descriptor, the peer transport streams the file in chunks
//! ([`crate::cluster::snapfile`]) — and installed by a follower that
//! receives one ([`apply_snapshot`]): copied into its own environment in one
//! transaction, synced, and the event history taken from it.

use super::*;
use crate::cluster::snapfile::Descriptor;

/// Make a snapshot for lagging followers: a consistent copy of the store,
/// off the executor.
pub(super) fn prepare_snapshot(shard: &Rc<Shard>, g: &mut Group) {
    let env = shard.store.borrow().env().clone();
    let send = g.opts.snap_dir.join("send");
    let slot = g.node.store().snap.clone();
    glommio::spawn_local(async move {
        let r = glommio::executor()
            .spawn_blocking(move || -> Result<Snapshot, String> {
                // The copy stays on disk: the peer writer streams it to the
                // follower in chunks; the message carries its descriptor.
                let tmp = send.join("tmp");
                let info = crate::store::Store::copy_to(&env, &tmp, META_CONF)
                    .map_err(|e| e.to_string())?;
                let file = send.join(format!("{}-{}.mdb", info.applied.0, info.applied.1));
                // Older copies go (a writer still streaming one keeps it open).
                if let Ok(dir) = std::fs::read_dir(&send) {
                    for e in dir.flatten() {
                        if e.path().extension().is_some_and(|x| x == "mdb") {
                            let _ = std::fs::remove_file(e.path());
                        }
                    }
                }
                std::fs::rename(tmp.join("data.mdb"), &file).map_err(|e| e.to_string())?;
                let _ = std::fs::remove_dir_all(&tmp);
                let d = Descriptor::of_file(&file).map_err(|e| e.to_string())?;
                let mut snap = Snapshot {
                    data: d.encode().into(),
                    ..Default::default()
                };
                let md = snap.mut_metadata();
                md.index = info.applied.0;
                md.term = info.applied.1;
                if let Some(c) = info.conf {
                    md.set_conf_state(ConfState::parse_from_bytes(&c).map_err(|e| e.to_string())?);
                }
                Ok(snap)
            })
            .await;
        *slot.borrow_mut() = match r {
            Ok(s) => {
                tracing::info!(
                    index = s.get_metadata().index,
                    bytes = Descriptor::decode(&s.data).map_or(0, |d| d.len),
                    "snapshot ready"
                );
                log::SnapSlot::Ready(s)
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot make a snapshot");
                log::SnapSlot::Empty
            }
        };
    })
    .detach();
}

/// Replace the store with a snapshot from the leader, make it durable,
/// and continue the log after it.
pub(super) async fn apply_snapshot(
    shard: &Rc<Shard>,
    g: &mut Group,
    snap: Snapshot,
) -> Result<(), Error> {
    let dir = g.opts.snap_dir.join("recv");
    let md = snap.get_metadata().clone();
    let corrupt = |e: String| Error::Store(crate::store::Error::Corrupt(e));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| corrupt(e.to_string()))?;
    // The file arrived ahead of the message (checked against its length
    // and CRC by the peer reader); it becomes the copy to restore from.
    let received = Descriptor::decode(&snap.data)
        .ok_or_else(|| corrupt("snapshot message without a file".into()))?;
    std::fs::rename(&received.path, dir.join("data.mdb"))
        .map_err(|e| corrupt(format!("snapshot file {}: {e}", received.path.display())))?;
    // LMDB trusts its file (a damaged one can crash the reader): a child
    // process reads every record first, and a snapshot it cannot read
    // stops this shard instead of killing the member or being installed.
    let (exe, check_dir) = (std::env::current_exe(), dir.clone());
    glommio::executor()
        .spawn_blocking(move || {
            let exe = exe.map_err(|e| e.to_string())?;
            crate::store::check::verify_in_child(&exe, &check_dir)
        })
        .await
        .map_err(|e| corrupt(format!("snapshot from the leader fails verification: {e}")))?;
    // The copy is written into the store's map in one transaction.
    let size = std::fs::metadata(dir.join("data.mdb")).map_or(0, |m| m.len());
    g.space.room(size + size / 4).await.map_err(Error::Space)?;
    let before = shard.store.borrow().index();
    shard.store.borrow_mut().restore(&dir)?;
    let _ = std::fs::remove_dir_all(&dir);
    let sync = crate::store::checkpoint(shard.store.borrow().env());
    glommio::executor()
        .spawn_blocking(sync)
        .await
        .map_err(|e| corrupt(format!("sync after snapshot: {e}")))?;
    g.node.mut_store().restart_at_snapshot(snap)?;
    if let Some(b) = shard.store.borrow().meta_get(META_MEMBERS)? {
        if let Some(c) = Cluster::decode(&b, g.opts.member_id) {
            *shard.view().write().expect("membership") = c;
        }
    }
    let index = shard.store.borrow().index();
    let (past, complete_from) = shard.store.borrow().recent_events()?;
    if shard.shared.seq.enabled {
        // What this group held behind a member-wide write is in the
        // snapshot; the write itself was resolved by the leader, as the
        // snapshot records, and this member's other groups resolve it the
        // same way (`sequencer::drain_stash`).
        g.seq.after_snapshot();
        shard.shared.seq.note_resolved(&shard.store.borrow())?;
        // One group of a sharded cluster: its events since this member's
        // last apply go to every orderer, then an epoch just above the
        // snapshot (this group's later entries have larger indexes).
        let mut events: Vec<_> = past.into_iter().filter(|e| e.index > before).collect();
        shard.publish(&mut events);
        shard.publish_epoch(index + 1, complete_from > before + 1);
    } else {
        shard
            .orderer
            .borrow_mut()
            .skip_to(index, &past, complete_from);
    }
    shard.executed.set(index);
    tracing::info!(
        shard = shard.id,
        index = md.index,
        term = md.term,
        etcd_index = index,
        "applied snapshot from the leader"
    );
    Ok(())
}
