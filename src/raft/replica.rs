//! Requests and applies of a raft group with several voters.
//!
//! Requests come from the loop ([`super::run`]): commands, configuration
//! changes and read barriers are tagged with this member's id and a
//! sequence number (the entry's context) and handed to raft in one
//! `MsgPropose`; their answers wait in the group's pending map until this
//! member applies the committed entry ([`apply_entries`]) or their deadline
//! passes (300 `request timed out`). Applying executes committed entries in
//! log order, so every member takes the same etcd indexes, and records
//! membership changes in the store's `meta`.

use super::*;

/// Internal requests queued like proposals (first byte; commands start
/// with their version, 2).
pub(super) const REQ_CONF: u8 = 0xC0;
pub(super) const REQ_READ: u8 = 0xC1;

/// A normal entry that publishes a member's attributes (its client URLs).
pub(super) const ENTRY_ATTRS: u8 = 0xC2;

/// True for an entry that carries no store command.
pub(super) fn is_internal(data: &[u8]) -> bool {
    matches!(
        data.first(),
        Some(&ENTRY_ATTRS | &sequencer::ENTRY_EPOCH | &sequencer::ENTRY_EPOCH_ASK)
    )
}

/// Several voters: hand each request to raft (a follower's raft forwards
/// it to the leader) tagged with this member's id and a sequence number;
/// the answer comes from this member's apply of the committed entry, or
/// error 300 at the deadline.
pub(super) fn propose_replicated(
    shard: &Rc<Shard>,
    g: &mut Group,
    proposals: &mut Vec<Proposal>,
    expire_now: Option<i64>,
) -> Result<(), Error> {
    let deadline = Instant::now() + g.opts.request_timeout;
    let mut batch: Vec<Entry> = Vec::new();
    for p in proposals.drain(..) {
        g.next_seq += 1;
        let seq = g.next_seq;
        let ctx = request_context(g.opts.member_id, seq);
        match p.data.first() {
            Some(&REQ_READ) => {
                g.node.read_index(ctx);
                if let Some(t) = p.target {
                    g.reads.push((seq, t, deadline));
                }
                continue;
            }
            Some(&REQ_CONF) => {
                let r = ConfChange::parse_from_bytes(&p.data[1..])
                    .map_err(|e| raft::Error::ConfChangeError(e.to_string()))
                    .and_then(|cc| g.node.propose_conf_change(ctx, cc));
                if let Err(e) = r {
                    if let Some(t) = p.target {
                        shard.answer(
                            t,
                            Answer::Read(Err(V2Error::new(
                                RAFT_INTERNAL,
                                format!("etcdserver: {e}"),
                                0,
                            ))),
                        );
                    }
                    continue;
                }
            }
            _ => {
                batch.push(Entry {
                    data: p.data.into(),
                    context: ctx.into(),
                    ..Default::default()
                });
            }
        }
        if let Some(t) = p.target {
            g.pending.insert(seq, (t, deadline));
        }
    }
    let sync = (expire_now.is_some() && shard.raft.is_leader()).then(|| {
        // One SYNC per 500 ms at most: it must commit before the keys go.
        g.next_sync = wall_nanos() + 500_000_000;
        let mut data = Vec::with_capacity(48);
        Command::new(Op::Sync, b"/", wall_nanos()).encode(&mut data);
        data
    });
    if shard.shared.seq.enabled {
        // A sharded cluster: the leader stamps every command first.
        batch.extend(sync.map(|data| Entry {
            data: data.into(),
            ..Default::default()
        }));
        if !batch.is_empty() {
            sequencer::propose(shard, g, batch)?;
        }
        return Ok(());
    }
    if !batch.is_empty() {
        // One message for the batch (a follower forwards it to the leader
        // whole).
        propose_batch(g, batch);
    }
    if let Some(data) = sync {
        let _ = g.node.propose(Vec::new(), data);
    }
    Ok(())
}

/// Step one `MsgPropose` carrying `batch`. While no leader is known raft
/// would drop it; such entries wait in `g.unsent` instead (they never
/// entered any log) and are proposed again once a leader is known, until
/// their requests time out. A proposal raft drops for another reason (a
/// leader transfer) times out like a lost one: 300, as in etcd.
pub(super) fn propose_batch(g: &mut Group, batch: Vec<Entry>) {
    if g.node.raft.leader_id == 0 {
        g.unsent.extend(batch);
        return;
    }
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgPropose);
    m.from = g.opts.member_id;
    m.set_entries(batch.into());
    let _ = g.node.step(m);
}

/// Propose again the entries dropped for want of a leader, once one is
/// known; those whose requests timed out are forgotten.
pub(super) fn retry_unsent(shard: &Shard, g: &mut Group) -> Result<(), Error> {
    if g.unsent.is_empty() || g.node.raft.leader_id == 0 {
        return Ok(());
    }
    let me = g.opts.member_id;
    let batch: Vec<Entry> = std::mem::take(&mut g.unsent)
        .into_iter()
        .filter(|e| own_request(me, &e.context).is_some_and(|s| g.pending.contains_key(&s)))
        .collect();
    if batch.is_empty() {
        return Ok(());
    }
    if shard.shared.seq.enabled {
        // This member may lead now: its commands need stamps.
        return sequencer::propose(shard, g, batch);
    }
    propose_batch(g, batch);
    Ok(())
}

pub(super) fn request_context(member: u64, seq: u64) -> Vec<u8> {
    let mut c = Vec::with_capacity(16);
    c.extend_from_slice(&member.to_le_bytes());
    c.extend_from_slice(&seq.to_le_bytes());
    c
}

/// The sequence number of a request of member `me` carried in `ctx`.
pub(super) fn own_request(me: u64, ctx: &[u8]) -> Option<u64> {
    (ctx.len() == 16 && ctx[..8] == me.to_le_bytes())
        .then(|| u64::from_le_bytes(ctx[8..].try_into().unwrap()))
}

/// Answer 300 to requests past their deadline; re-ask unresolved quorum
/// reads now and then (a read barrier is dropped while there is no leader).
pub(super) fn expire_requests(g: &mut Group, now: Instant, answers: &mut Vec<(Target, Answer)>) {
    let timed_out = || V2Error::new(RAFT_INTERNAL, "etcdserver: request timed out", 0);
    let mut expired = Vec::new();
    g.pending.retain(|_, (t, d)| {
        if *d <= now {
            expired.push(*t);
            false
        } else {
            true
        }
    });
    let mut reads = Vec::new();
    g.reads.retain(|(_, t, d)| {
        if *d <= now {
            reads.push(*t);
            false
        } else {
            true
        }
    });
    if !expired.is_empty() || !reads.is_empty() {
        tracing::debug!(
            writes = expired.len(),
            reads = reads.len(),
            "requests timed out"
        );
    }
    for t in expired {
        answers.push((
            t,
            Answer::Write(Reply {
                outcome: Err(timed_out()),
                raft_index: 0,
                raft_term: 0,
            }),
        ));
    }
    for t in reads {
        answers.push((t, Answer::Read(Err(timed_out()))));
    }
    let retry = g.opts.heartbeat * (g.opts.election_ticks as u32 / 2).max(1);
    if !g.reads.is_empty() && now.duration_since(g.last_read_retry) >= retry {
        g.last_read_retry = now;
        let me = g.opts.member_id;
        for (seq, _, _) in &g.reads {
            g.node.read_index(request_context(me, *seq));
        }
    }
}

/// Each member publishes its name and client URLs through the log once
/// per start (etcd's member attributes), retrying until applied.
/// The member reports ready (`/health`) once they are applied.
pub(super) fn publish_attributes(shard: &Shard, g: &mut Group, now: Instant) {
    if g.attrs_done {
        shard.raft.set_attrs_applied();
        return;
    }
    if shard.raft.leader() == 0 {
        return;
    }
    if !replicated(shard, g) {
        g.attrs_done = true;
        shard.raft.set_attrs_applied();
        return;
    }
    let me = {
        let v = shard.view().read().expect("membership");
        match v.get(g.opts.member_id) {
            Some(m) => m.clone(),
            None => return,
        }
    };
    if g.last_attrs
        .is_some_and(|t| now.duration_since(t) < Duration::from_secs(2))
    {
        return;
    }
    g.last_attrs = Some(now);
    let m = Member {
        client_urls: g.opts.client_urls.clone(),
        name: g.opts.name.clone(),
        ..me
    };
    let mut data = vec![ENTRY_ATTRS];
    data.extend_from_slice(m.encode().as_bytes());
    let _ = g.node.propose(Vec::new(), data);
}

/// Wait until this member has applied everything the leader had committed
/// when asked (ReadIndex): a read after this is linearizable.
///
/// A sharded cluster's barrier runs in the group of shard `owner` (the one
/// holding the key read) and returns the etcd index that group had applied
/// then: the read must see a view at least that new (`ReadOpts::at_least`).
pub async fn read_barrier(shard: &Rc<Shard>, owner: usize) -> Result<u64, V2Error> {
    let answer = if shard.shared.seq.enabled {
        shard.propose(owner, vec![REQ_READ]).await
    } else {
        shard.request(vec![REQ_READ]).await
    };
    match answer {
        Answer::Read(Ok((_, index))) if shard.shared.seq.enabled => Ok(index),
        Answer::Read(Ok(_)) => Ok(0),
        Answer::Read(Err(e))
        | Answer::Write(Reply {
            outcome: Err(e), ..
        }) => Err(e),
        Answer::Write(_) => Err(V2Error::new(RAFT_INTERNAL, "etcdserver: internal error", 0)),
    }
}

/// A read state arrived: the barrier waits for that index to be applied.
pub(super) fn barrier_reached(g: &mut Group, ctx: &[u8], index: u64) {
    let Some(seq) = own_request(g.opts.member_id, ctx) else {
        return;
    };
    if let Some(at) = g.reads.iter().position(|(s, _, _)| *s == seq) {
        let (_, t, _) = g.reads.swap_remove(at);
        g.barriers.push((index, t));
    }
}

/// Execute committed entries the store has not applied yet, in log order:
/// in a sharded cluster, up to a member-wide write, where the group waits
/// for the others ([`sequencer::apply_in_order`]).
pub(super) fn apply_entries(
    shard: &Rc<Shard>,
    g: &mut Group,
    entries: &[Entry],
    answers: &mut Vec<(Target, Answer)>,
) -> Result<(), Error> {
    if shard.shared.seq.enabled {
        return sequencer::apply_in_order(shard, g, entries, answers);
    }
    apply_run(shard, g, entries, answers)
}

/// Execute committed entries the store has not applied yet, in log order,
/// in one transaction: commands, configuration changes, member attributes.
/// Answers go to this member's requests among them.
pub(super) fn apply_run(
    shard: &Rc<Shard>,
    g: &mut Group,
    entries: &[Entry],
    answers: &mut Vec<(Target, Answer)>,
) -> Result<(), Error> {
    // Entries arrive in log order; those at or below the applied index were
    // executed before they were logged (one voter).
    let applied = shard.store.borrow().applied().0;
    let Some(last) = entries.last().filter(|e| e.index > applied) else {
        return Ok(());
    };
    let last = (last.index, last.term);
    let me = g.opts.member_id;
    let (node, pending) = (&mut g.node, &mut g.pending);
    let view = shard.view().clone();
    let mut answer = |seq: Option<u64>, a: Answer| {
        if let Some((t, _)) = seq.and_then(|s| pending.remove(&s)) {
            answers.push((t, a));
        }
    };
    let mut confs = Vec::new();
    let mut removed = false;
    let mut told = Vec::new();
    let mut attrs_done = false;
    let mut commands = 0u64;
    let stamped = shard.shared.seq.enabled;
    let epochs = &mut g.epochs;
    // A sharded cluster's commands that turned out to span shards, by this
    // member's request sequence: proposed again as member-wide writes.
    let mut escalated: Vec<(u64, Vec<u8>)> = Vec::new();
    shard.store.borrow_mut().batch(|st, txn| {
        for e in entries.iter().filter(|e| e.index > applied) {
            let seq = own_request(me, &e.context);
            match e.get_entry_type() {
                EntryType::EntryNormal if e.data.is_empty() => {}
                EntryType::EntryNormal if e.data[0] == sequencer::ENTRY_EPOCH => {
                    if let Some(start) = sequencer::epoch_of(&e.data) {
                        epochs.push(start);
                    }
                }
                EntryType::EntryNormal if e.data[0] == sequencer::ENTRY_EPOCH_ASK => {}
                EntryType::EntryNormal if e.data[0] == ENTRY_ATTRS => {
                    let m = std::str::from_utf8(&e.data[1..])
                        .ok()
                        .and_then(Member::decode);
                    if let Some(m) = m {
                        attrs_done |= m.id == me;
                        let mut v = view.write().expect("membership");
                        if let Some(x) = v.get(m.id).cloned() {
                            v.upsert(Member {
                                name: m.name,
                                client_urls: m.client_urls,
                                ..x
                            });
                            st.meta_put(txn, META_MEMBERS, &v.encode())?;
                        }
                    }
                }
                EntryType::EntryNormal if stamped => {
                    commands += 1;
                    match sequencer::apply(st, txn, &e.data)? {
                        Some(Err(err)) if err.code == ESCALATE => {
                            if let Some(s) = seq {
                                escalated.push((s, e.data.to_vec()));
                            }
                        }
                        Some(outcome) => {
                            let reply = Reply {
                                outcome,
                                raft_index: 0,
                                raft_term: 0,
                            };
                            answer(seq, Answer::Write(reply));
                        }
                        None => {}
                    }
                }
                EntryType::EntryNormal => {
                    commands += 1;
                    if let Some(outcome) = st.execute(txn, &e.data)? {
                        let reply = Reply {
                            outcome,
                            raft_index: 0,
                            raft_term: 0,
                        };
                        answer(seq, Answer::Write(reply));
                    }
                }
                EntryType::EntryConfChange => {
                    let cc = ConfChange::parse_from_bytes(&e.data).map_err(|e| {
                        crate::store::Error::Corrupt(format!("conf change entry: {e}"))
                    })?;
                    let cs = node.apply_conf_change(&cc).map_err(raft_fatal)?;
                    let mut v = view.write().expect("membership");
                    match cc.get_change_type() {
                        ConfChangeType::RemoveNode => {
                            v.remove(cc.node_id);
                            removed |= cc.node_id == me;
                            if cc.node_id != me {
                                told.push(cc.node_id);
                            }
                        }
                        _ => {
                            let m = std::str::from_utf8(&cc.context)
                                .ok()
                                .and_then(Member::decode);
                            if let Some(m) = m {
                                v.upsert(m);
                            }
                        }
                    }
                    st.meta_put(txn, META_MEMBERS, &v.encode())?;
                    st.meta_put(txn, META_CONF, &cs.write_to_bytes().unwrap_or_default())?;
                    tracing::info!(change = ?cc.get_change_type(), member = %format!("{:x}", cc.node_id), voters = ?cs.voters, "membership changed");
                    confs.push(cs);
                    if seq.is_some() {
                        answer(seq, Answer::Read(Ok((v.encode(), 0))));
                    }
                }
                EntryType::EntryConfChangeV2 => {}
            }
        }
        Ok(((), Some(last)))
    })?;
    if !confs.is_empty() {
        // A prepared snapshot describes the old configuration.
        let slot = &g.node.store().snap;
        if matches!(*slot.borrow(), log::SnapSlot::Ready(_)) {
            *slot.borrow_mut() = log::SnapSlot::Empty;
        }
    }
    for cs in confs {
        g.node.mut_store().set_conf_state(cs);
    }
    g.removed |= removed;
    for (s, data) in escalated {
        if let Some((t, _)) = g.pending.remove(&s) {
            global::submit(shard, Job::Write(data), t);
        }
    }
    // A removed member may never apply its own removal (the leader stops
    // replicating to it): tell it.
    if let Some(t) = shard.raft.transport() {
        for id in told {
            t.send_removed(id);
        }
    }
    g.attrs_done |= attrs_done;
    let m = &shard.shared.metrics;
    m.proposals_committed.inc_by(commands);
    m.proposals_applied.inc_by(commands);
    Ok(())
}
