//! Member-wide operations of a sharded single member, as the raft loop
//! sees them: parked for a coordinator session ([`park_session`]), each
//! step executed and logged on this shard, and the roll-forward that
//! completes an operation a crash left on some shards only
//! ([`roll_forward`]). See docs/architecture.md, *Several shards*.

use super::*;

/// After a crash in the middle of a member-wide operation, some shards may
/// have logged it and others not (each fsyncs its own log). No shard logs
/// anything after such an operation until every shard has it, so a shard
/// that missed one appends it now, in order, from another shard's log:
/// the operation ends up applied everywhere, never half.
pub async fn roll_forward(
    shard: &Rc<Shard>,
    g: &mut Group,
    ops: &[(u64, Vec<u8>)],
) -> Result<usize, Error> {
    let mine = shard.store.borrow().gseq();
    let mut n = 0;
    for (gseq, data) in ops {
        if *gseq > mine {
            apply_global(shard, g, data.clone())?;
            n += 1;
        }
    }
    if n > 0 {
        flush_global(shard, g).await?;
        tracing::warn!(
            shard = shard.id,
            operations = n,
            "completed member-wide operations a crash interrupted"
        );
    }
    Ok(n)
}

/// Shard 0 of a sharded member turns each due directory TTL into a
/// member-wide expiry.
pub(super) fn expire_dirs(shard: &Rc<Shard>) -> Result<(), Error> {
    let due = shard.store.borrow().due_dirs(wall_nanos(), 64)?;
    for dir in due {
        if shard.global.expiring.borrow().contains(&dir) {
            continue;
        }
        shard.global.expiring.borrow_mut().push(dir.clone());
        let mut data = Vec::with_capacity(48 + dir.len());
        Command::new(Op::Sync, &dir, wall_nanos()).encode(&mut data);
        global::submit(shard, Job::Write(data), None);
    }
    Ok(())
}

/// Parked for a member-wide operation: carry out the coordinator's steps
/// until it releases the shard. The loop is at a batch boundary: nothing of
/// this shard is in flight.
pub(super) async fn park_session(shard: &Rc<Shard>, g: &mut Group) -> Result<(), Error> {
    if shard.global.take_cut_request() {
        // The session's reads see this shard as it is now.
        shard.store.borrow_mut().take_cut()?;
    }
    global::report_parked(shard);
    loop {
        let op = global::next_subop(shard).await;
        tracing::trace!(shard = shard.id, op = op.name(), "subop");
        match op {
            SubOp::Unpark => {
                global::set_applying(shard, false);
                return Ok(());
            }
            SubOp::Batch(ops) => {
                let mut results = Vec::with_capacity(ops.len());
                let mut failed = None;
                for op in ops {
                    match subop(shard, g, op).await {
                        Ok(r) => results.push(r),
                        Err(e) => {
                            results.push(SubResult::Failed(e.to_string()));
                            failed = Some(e);
                            break;
                        }
                    }
                }
                global::report(shard, SubResult::Batch(results));
                if let Some(e) = failed {
                    return Err(e);
                }
            }
            op => match subop(shard, g, op).await {
                Ok(r) => global::report(shard, r),
                Err(e) => {
                    global::report(shard, SubResult::Failed(e.to_string()));
                    return Err(e);
                }
            },
        }
    }
}

/// Carry out one step of a member-wide session.
pub(super) async fn subop(shard: &Rc<Shard>, g: &mut Group, op: SubOp) -> Result<SubResult, Error> {
    Ok(match op {
        SubOp::Trial(data) => SubResult::Outcome(shard.store.borrow_mut().trial(&data)?),
        SubOp::Flush => {
            flush_global(shard, g).await?;
            SubResult::Outcome(None)
        }
        SubOp::Pass => {
            sequencer::pass_global(shard, g)?;
            SubResult::Outcome(None)
        }
        SubOp::Apply(_) if shard.shared.seq.enabled => {
            global::set_applying(shard, true);
            SubResult::Outcome(sequencer::apply_global(shard, g)?)
        }
        SubOp::Apply(data) => {
            global::set_applying(shard, true);
            SubResult::Outcome(apply_global(shard, g, data)?)
        }
        SubOp::Unpark | SubOp::Batch(_) => {
            return Err(Error::Store(crate::store::Error::Corrupt(
                "unexpected step in a member-wide batch".into(),
            )))
        }
    })
}

/// Execute and log one member-wide write on this shard; the coordinator's
/// `Flush` step makes the session's writes durable with one fsync.
pub(super) fn apply_global(
    shard: &Rc<Shard>,
    g: &mut Group,
    data: Vec<u8>,
) -> Result<Option<crate::store::Outcome>, Error> {
    let node = &mut g.node;
    let o = shard.store.borrow_mut().batch(|st, txn| {
        let o = st.execute(txn, &data)?;
        node.propose(Vec::new(), data.clone()).map_err(raft_fatal)?;
        let last = node.raft.raft_log.last_index();
        let term = node.raft.raft_log.term(last).unwrap_or(node.raft.term);
        Ok((o, Some((last, term))))
    })?;
    shard.executed.set(shard.store.borrow().index());
    Ok(o)
}

/// Make the member-wide writes of this session durable (one fsync).
pub(super) async fn flush_global(shard: &Rc<Shard>, g: &mut Group) -> Result<(), Error> {
    if !shard.shared.seq.enabled {
        // (A sharded cluster's member-wide writes are in the log already.)
        handle_ready(shard, g, &mut Vec::new()).await?;
    }
    // The coordinator publishes each write's one merged event; only
    // placeholders (indexes no write kept) are this shard's to publish.
    let mut events = Vec::new();
    shard.store.borrow_mut().take_events(&mut events);
    events.retain(|e| e.json().is_empty());
    shard.publish(&mut events);
    shard.publish_figures();
    Ok(())
}
