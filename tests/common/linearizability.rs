//! A linearizability checker for histories of etcd v2 key operations, in the
//! Wing–Gong style with Lowe's memoization (as in porcupine and knossos):
//! a depth-first search for a total order of the operations that respects
//! real time and replays correctly on a sequential register, pruning every
//! (set of linearized operations, register state) configuration it has seen
//! before. Keys are independent registers, so a history is checked one key
//! at a time (P-compositionality).
//!
//! The model is a single-key register: `Read` observes the value (`None` =
//! absent), `Write` sets it, `Cas` sets it only if it equals `expect` and
//! reports whether it did, `Delete` removes it and reports whether it
//! existed. An operation whose outcome the client does not know (a timeout,
//! a dropped connection or a 5xx after the request was sent) is
//! *indeterminate*: `ret` is `None`, it may take effect at any moment after
//! its call or never, and its recorded outcome is ignored. Failed reads
//! carry no information and should simply be left out of a history.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

/// What an operation did and, when it completed, what it observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A read that returned `got` (`None`: the key did not exist).
    Read { got: Option<String> },
    /// An unconditional write.
    Write { value: String },
    /// Compare-and-swap: set `new` if the value is `expect`; `ok` says
    /// whether the server reported that it did.
    Cas {
        expect: String,
        new: String,
        ok: bool,
    },
    /// Delete; `existed` says whether the server found the key.
    Delete { existed: bool },
}

/// One client operation on one key. Times are nanoseconds on any clock
/// shared by all clients (see [`Clock`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    pub client: usize,
    pub key: String,
    pub kind: Kind,
    /// When the request was sent.
    pub call: u64,
    /// When the answer arrived; `None` for an indeterminate operation.
    pub ret: Option<u64>,
}

impl Op {
    pub fn read(client: usize, key: &str, call: u64, ret: u64, got: Option<&str>) -> Op {
        Op::new(
            client,
            key,
            Kind::Read {
                got: got.map(str::to_string),
            },
            call,
            Some(ret),
        )
    }

    pub fn write(client: usize, key: &str, call: u64, ret: Option<u64>, value: &str) -> Op {
        Op::new(
            client,
            key,
            Kind::Write {
                value: value.to_string(),
            },
            call,
            ret,
        )
    }

    /// A CAS; with `ret == None` the `ok` flag is ignored.
    pub fn cas(
        client: usize,
        key: &str,
        call: u64,
        ret: Option<u64>,
        expect: &str,
        new: &str,
        ok: bool,
    ) -> Op {
        Op::new(
            client,
            key,
            Kind::Cas {
                expect: expect.to_string(),
                new: new.to_string(),
                ok,
            },
            call,
            ret,
        )
    }

    /// A delete; with `ret == None` the `existed` flag is ignored.
    pub fn delete(client: usize, key: &str, call: u64, ret: Option<u64>, existed: bool) -> Op {
        Op::new(client, key, Kind::Delete { existed }, call, ret)
    }

    pub fn new(client: usize, key: &str, kind: Kind, call: u64, ret: Option<u64>) -> Op {
        Op {
            client,
            key: key.to_string(),
            kind,
            call,
            ret,
        }
    }

    pub fn is_indeterminate(&self) -> bool {
        self.ret.is_none()
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |t: u64| t as f64 / 1e6;
        write!(f, "c{} [{:.3}ms, ", self.client, ms(self.call))?;
        match self.ret {
            Some(r) => write!(f, "{:.3}ms] ", ms(r))?,
            None => write!(f, "?] ")?,
        }
        let unknown = self.ret.is_none();
        match &self.kind {
            Kind::Read { got } => write!(f, "read {} -> {:?}", self.key, got),
            Kind::Write { value } => write!(f, "write {} = {:?}", self.key, value),
            Kind::Cas { expect, new, ok } => {
                write!(f, "cas {} {:?} -> {:?}", self.key, expect, new)?;
                if unknown {
                    write!(f, " (outcome unknown)")
                } else {
                    write!(f, " ok={ok}")
                }
            }
            Kind::Delete { existed } => {
                write!(f, "delete {}", self.key)?;
                if unknown {
                    write!(f, " (outcome unknown)")
                } else {
                    write!(f, " existed={existed}")
                }
            }
        }
    }
}

/// Nanoseconds since the clock was made; one clock for all client threads.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Clock {
        Clock(Instant::now())
    }

    pub fn now(&self) -> u64 {
        self.0.elapsed().as_nanos() as u64
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// A thread-safe history being recorded.
#[derive(Debug, Default)]
pub struct Recorder(Mutex<Vec<Op>>);

impl Recorder {
    pub fn push(&self, op: Op) {
        self.0.lock().unwrap().push(op);
    }

    pub fn take(&self) -> Vec<Op> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The operations of a multi-key history grouped by key, each group in the
/// original order.
pub fn partition_by_key(history: &[Op]) -> BTreeMap<String, Vec<Op>> {
    let mut out: BTreeMap<String, Vec<Op>> = BTreeMap::new();
    for op in history {
        out.entry(op.key.clone()).or_default().push(op.clone());
    }
    out
}

/// Checks every key of a multi-key history; the error names the first key
/// that is not linearizable.
pub fn check_all(history: &[Op]) -> Result<(), String> {
    for (key, ops) in partition_by_key(history) {
        check(&ops).map_err(|e| format!("key {key:?}: {e}"))?;
    }
    Ok(())
}

/// Configurations explored before the checker gives up (an `Err` saying so).
pub const DEFAULT_BUDGET: usize = 5_000_000;

/// Whether a single-key history (every op on the same key, initially absent)
/// is linearizable. The error explains the longest linearizable prefix found
/// and which operations could not be placed after it.
pub fn check(history: &[Op]) -> Result<(), String> {
    check_with_budget(history, DEFAULT_BUDGET)
}

/// [`check`] exploring at most `budget` configurations.
pub fn check_with_budget(history: &[Op], budget: usize) -> Result<(), String> {
    if let Some(first) = history.first() {
        if let Some(other) = history.iter().find(|o| o.key != first.key) {
            return Err(format!(
                "check() takes one key, got {:?} and {:?} (use check_all)",
                first.key, other.key
            ));
        }
    }
    for op in history {
        if op.ret.is_some_and(|r| r < op.call) {
            return Err(format!("operation returns before its call: {op}"));
        }
    }
    Search::new(history).run(budget)
}

// ---------------------------------------------------------------------------
// The search

/// A register value: 0 = absent, i + 1 = the i-th interned string.
type Value = u32;

#[derive(Debug, Clone, Copy)]
enum Step {
    Read(Value),
    Write(Value),
    Cas {
        expect: Value,
        new: Value,
        ok: Option<bool>,
    },
    Delete(Option<bool>),
    /// An indeterminate read: no constraint, no effect.
    Nothing,
}

impl Step {
    /// The state after applying the op to `state`, or None if the op's
    /// recorded outcome is impossible in `state`.
    fn apply(self, state: Value) -> Option<Value> {
        match self {
            Step::Read(v) => (v == state).then_some(state),
            Step::Write(v) => Some(v),
            Step::Cas { expect, new, ok } => {
                let matches = state == expect;
                if ok.is_some_and(|ok| ok != matches) {
                    return None;
                }
                Some(if matches { new } else { state })
            }
            Step::Delete(existed) => {
                if existed.is_some_and(|e| e != (state != 0)) {
                    return None;
                }
                Some(0)
            }
            Step::Nothing => Some(state),
        }
    }
}

/// One call or return event in a doubly linked list (indices into
/// `Search::events`; 0 is the head sentinel, the last one the tail).
#[derive(Debug, Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    /// For a call: its return event.
    partner: usize,
    prev: usize,
    next: usize,
}

struct Search<'a> {
    history: &'a [Op],
    steps: Vec<Step>,
    values: Vec<String>,
    events: Vec<Event>,
    head: usize,
    tail: usize,
}

impl<'a> Search<'a> {
    fn new(history: &'a [Op]) -> Search<'a> {
        let mut interned: HashMap<String, Value> = HashMap::new();
        let mut values = Vec::new();
        let mut intern = |s: &str| -> Value {
            if let Some(&v) = interned.get(s) {
                return v;
            }
            values.push(s.to_string());
            let v = values.len() as Value;
            interned.insert(s.to_string(), v);
            v
        };
        let steps = history
            .iter()
            .map(|op| {
                let known = op.ret.is_some();
                match &op.kind {
                    Kind::Read { .. } if !known => Step::Nothing,
                    Kind::Read { got } => Step::Read(got.as_deref().map_or(0, &mut intern)),
                    Kind::Write { value } => Step::Write(intern(value)),
                    Kind::Cas { expect, new, ok } => Step::Cas {
                        expect: intern(expect),
                        new: intern(new),
                        ok: known.then_some(*ok),
                    },
                    Kind::Delete { existed } => Step::Delete(known.then_some(*existed)),
                }
            })
            .collect();

        // Events in time order; at equal times calls come first, so that
        // touching operations count as concurrent (the lenient reading).
        // Indeterminate operations return after everything else.
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(history.len() * 2);
        for (i, op) in history.iter().enumerate() {
            order.push((op.call, false, i));
            order.push((op.ret.unwrap_or(u64::MAX), true, i));
        }
        order.sort();
        let n = order.len();
        let (head, tail) = (0, n + 1);
        let mut events = vec![
            Event {
                op: usize::MAX,
                is_call: false,
                partner: 0,
                prev: 0,
                next: 0,
            };
            n + 2
        ];
        let mut ret_at = vec![0; history.len()];
        for (pos, &(_, is_ret, op)) in order.iter().enumerate() {
            let at = pos + 1;
            events[at] = Event {
                op,
                is_call: !is_ret,
                partner: 0,
                prev: at - 1,
                next: at + 1,
            };
            if is_ret {
                ret_at[op] = at;
            }
        }
        events[head].next = 1;
        events[tail].prev = n;
        for e in &mut events[1..=n] {
            if e.is_call {
                e.partner = ret_at[e.op];
            }
        }
        Search {
            history,
            steps,
            values,
            events,
            head,
            tail,
        }
    }

    /// Removes a call and its return from the list.
    fn lift(&mut self, call: usize) {
        let (p, n) = (self.events[call].prev, self.events[call].next);
        self.events[p].next = n;
        self.events[n].prev = p;
        let ret = self.events[call].partner;
        let (p, n) = (self.events[ret].prev, self.events[ret].next);
        self.events[p].next = n;
        self.events[n].prev = p;
    }

    /// Undoes the matching `lift` (lifts are undone in reverse order).
    fn unlift(&mut self, call: usize) {
        let ret = self.events[call].partner;
        let (p, n) = (self.events[ret].prev, self.events[ret].next);
        self.events[p].next = ret;
        self.events[n].prev = ret;
        let (p, n) = (self.events[call].prev, self.events[call].next);
        self.events[p].next = call;
        self.events[n].prev = call;
    }

    fn show(&self, v: Value) -> String {
        if v == 0 {
            "<absent>".to_string()
        } else {
            format!("{:?}", self.values[v as usize - 1])
        }
    }

    fn run(mut self, budget: usize) -> Result<(), String> {
        let ops = self.history.len();
        let mut remaining = self.history.iter().filter(|o| o.ret.is_some()).count();
        if remaining == 0 {
            return Ok(());
        }
        let words = ops.div_ceil(64);
        let mut linearized = vec![0u64; words];
        let mut cache: HashSet<(Box<[u64]>, Value)> = HashSet::new();
        // (call event, state before it)
        let mut stack: Vec<(usize, Value)> = Vec::new();
        let mut state: Value = 0;
        // The deepest point reached, for the error message.
        let mut best: (usize, Vec<usize>, Value, Vec<usize>) = (0, Vec::new(), 0, Vec::new());
        let mut entry = self.events[self.head].next;
        loop {
            let e = self.events[entry];
            if entry != self.tail && e.is_call {
                if let Some(next_state) = self.steps[e.op].apply(state) {
                    linearized[e.op / 64] |= 1 << (e.op % 64);
                    if cache.insert((linearized.clone().into_boxed_slice(), next_state)) {
                        if cache.len() > budget {
                            return Err(format!(
                                "gave up after exploring {budget} configurations of {ops} operations"
                            ));
                        }
                        stack.push((entry, state));
                        state = next_state;
                        self.lift(entry);
                        if self.history[e.op].ret.is_some() {
                            remaining -= 1;
                            if remaining == 0 {
                                return Ok(());
                            }
                        }
                        let done = stack.len();
                        if done > best.0 {
                            best = (
                                done,
                                stack.iter().map(|&(c, _)| self.events[c].op).collect(),
                                state,
                                self.candidates(),
                            );
                        }
                        entry = self.events[self.head].next;
                        continue;
                    }
                    linearized[e.op / 64] &= !(1 << (e.op % 64));
                }
                entry = e.next;
            } else {
                // A return (or the end): the op it ends must go first, but
                // nothing left can be placed here. Backtrack.
                let Some((call, before)) = stack.pop() else {
                    return Err(self.explain(best));
                };
                let op = self.events[call].op;
                if self.history[op].ret.is_some() {
                    remaining += 1;
                }
                state = before;
                linearized[op / 64] &= !(1 << (op % 64));
                self.unlift(call);
                entry = self.events[call].next;
            }
        }
    }

    /// The operations that could be linearized next: calls before the first
    /// remaining return.
    fn candidates(&self) -> Vec<usize> {
        let mut out = Vec::new();
        let mut at = self.events[self.head].next;
        while at != self.tail && self.events[at].is_call {
            out.push(self.events[at].op);
            at = self.events[at].next;
        }
        if at != self.tail {
            // The op whose return blocks: it is among the calls above.
            let blocking = self.events[at].op;
            if !out.contains(&blocking) {
                out.push(blocking);
            }
        }
        out
    }

    fn explain(&self, best: (usize, Vec<usize>, Value, Vec<usize>)) -> String {
        let (_, prefix, state, candidates) = best;
        let mut msg = format!(
            "not linearizable: the longest linearizable prefix places {} of {} operations",
            prefix.len(),
            self.history.len()
        );
        let shown = prefix.len().saturating_sub(10);
        if shown > 0 {
            msg.push_str(&format!("\n  ... {shown} earlier operations"));
        }
        for &op in &prefix[shown..] {
            msg.push_str(&format!("\n  {}", self.history[op]));
        }
        msg.push_str(&format!(
            "\nleaving the register at {}; none of these can come next:",
            self.show(state)
        ));
        if prefix.is_empty() {
            // Nothing could even go first: recompute from the full list.
            let mut at = self.events[self.head].next;
            while at != self.tail && self.events[at].is_call {
                msg.push_str(&format!("\n  {}", self.history[self.events[at].op]));
                at = self.events[at].next;
            }
        } else {
            for &op in &candidates {
                msg.push_str(&format!("\n  {}", self.history[op]));
            }
        }
        msg
    }
}
