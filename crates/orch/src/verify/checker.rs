//! The linearizability checker of the register workload: pure, a function of the history.
//!
//! # Theory of operation
//!
//! Each key is a register whose state is `(version, value)`, as the data service keeps it:
//! a read observes both; a write sets the value and moves the version by one; a
//! compare-and-set (`If-Match`) does the same only when the version is the expected one, and
//! else fails with nothing changed. Keys are independent objects, so a history is
//! linearizable exactly when each key's sub-history is (P-compositionality, Herlihy & Wing):
//! every key is checked on its own.
//!
//! The search is Wing & Gong's, with Lowe's just-in-time linearization, as Porcupine runs it:
//! the calls and returns of the operations are one list in time order (a call first when
//! times tie: overlapping is the permissive reading). Walking it, a call may be linearized
//! now if the model accepts it from the current state; it is then lifted out of the list
//! (with its return) and the walk restarts from the head. Reaching a return means the
//! operation it ends was not linearized in time: the last choice is undone (backtracking).
//! A memo of the (set of linearized operations, state) pairs already explored cuts off
//! every path that reaches a configuration seen before.
//!
//! Unknown outcomes (`info`) are Jepsen's: the operation may or may not have taken effect,
//! at any point after its call. Its return is put after the end of the history, so it may
//! be linearized anywhere later, including after everything (which no one observes: the
//! same as never happening); any answer is accepted from it. Failed operations (`fail`)
//! are dropped, except a cas refused for a version mismatch, which is an observation
//! (the version was not the expected one) and is checked as such. Reads that did not
//! complete observe nothing and are dropped.
//!
//! The search is bounded by the memo's bytes and by time; past the bound the answer
//! is [`Verdict::Unknown`], never a guess. On [`Verdict::Invalid`] the counterexample is
//! taken at the deepest point the search reached: the state there, the operation whose
//! completion nothing could explain, and the operations concurrent with it.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;

/// The outcome of a check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    Unknown,
    Invalid,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Valid => "valid",
            Verdict::Unknown => "unknown",
            Verdict::Invalid => "invalid",
        }
    }

    /// The verdict of several independent checks: the worst of them.
    pub fn combine(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
        verdicts.into_iter().max().unwrap_or(Verdict::Valid)
    }
}

/// A register's state: the item's version and its value (an index into the key's values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct State {
    pub version: i64,
    pub value: u32,
}

/// What an operation asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    Read,
    Write(u32),
    Cas { expected: i64, value: u32 },
}

/// What the cluster answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// A read's version and value.
    Read(State),
    /// A write's or cas's new version.
    Written(i64),
    /// A cas refused: the version was not the expected one.
    CasFailed,
    /// The client cannot tell (Jepsen's `info`).
    Unknown,
}

/// One operation of a key's history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Op {
    /// The caller's number for it (the history's operation number).
    pub id: u64,
    pub call: u64,
    /// `None`: the outcome is unknown, so it stays open until after the end.
    pub ret: Option<u64>,
    pub input: Input,
    pub output: Output,
}

/// The model: the state after `op` from `state`, or `None` if `op` cannot happen there.
pub fn step(state: State, input: Input, output: Output) -> Option<State> {
    let written = |value| State { version: state.version + 1, value };
    match (input, output) {
        (Input::Read, Output::Read(seen)) => (seen == state).then_some(state),
        (Input::Read, _) => Some(state),
        (Input::Write(value), Output::Written(v)) => (v == state.version + 1).then(|| written(value)),
        (Input::Write(value), _) => Some(written(value)),
        (Input::Cas { expected, value }, Output::Written(v)) => {
            (state.version == expected && v == expected + 1).then(|| written(value))
        }
        (Input::Cas { expected, .. }, Output::CasFailed) => (state.version != expected).then_some(state),
        (Input::Cas { expected, value }, _) => Some(if state.version == expected { written(value) } else { state }),
    }
}

/// How far a search may go before it answers [`Verdict::Unknown`].
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// Bytes the memo of configurations (linearized set, state) may take: a configuration
    /// costs `(words + 2) × 8` bytes plus the table's share ([`MEMO_ENTRY_OVERHEAD`]), so a
    /// long history, with a wider bitset, is held to fewer of them.
    pub bytes: usize,
    /// Wall time for one key.
    pub time: Duration,
}

/// A memo entry's cost besides its words: the boxed slice's pointer and length, and the
/// hash table's control byte and spare capacity, rounded up.
pub const MEMO_ENTRY_OVERHEAD: usize = 24;

impl Default for Bound {
    fn default() -> Self {
        Self { bytes: 256 << 20, time: Duration::from_secs(30) }
    }
}

/// Why a key's history is not linearizable, at the deepest point the search reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Counterexample {
    /// How many operations were linearized there.
    pub linearized: usize,
    /// The register's state there.
    pub state: State,
    /// The operation whose completion no order explains.
    pub stuck: u64,
    /// The operations still open beside it (none of them helps), in call order.
    pub concurrent: Vec<u64>,
}

/// The check of one key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Checked {
    pub verdict: Verdict,
    pub ops: usize,
    /// Configurations explored.
    pub explored: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub counterexample: Option<Counterexample>,
    /// Why the answer is unknown, or what made it invalid before any search.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

/// The calls and returns in time order, as a doubly linked list that entries are lifted
/// out of and put back into (dancing links).
struct Entries {
    /// Per node: the operation's index, and the return node for a call (NIL for a return).
    op: Vec<usize>,
    ret: Vec<usize>,
    prev: Vec<usize>,
    next: Vec<usize>,
}

impl Entries {
    fn new(ops: &[Op]) -> Self {
        // (time, returns after calls at equal times, op index, is call)
        let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            order.push((op.call, false, i));
            order.push((op.ret.unwrap_or(u64::MAX), true, i));
        }
        order.sort_unstable();
        let n = order.len() + 1;
        let (mut op, mut ret, mut prev, mut next) = (vec![NIL; n], vec![NIL; n], vec![NIL; n], vec![NIL; n]);
        let mut call_node = vec![NIL; ops.len()];
        for (k, &(_, is_ret, i)) in order.iter().enumerate() {
            let node = k + 1;
            op[node] = i;
            if is_ret {
                ret[call_node[i]] = node;
            } else {
                call_node[i] = node;
            }
            prev[node] = node - 1;
            next[node - 1] = node;
        }
        Self { op, ret, prev, next }
    }

    fn lift(&mut self, call: usize) {
        let ret = self.ret[call];
        let (p, n) = (self.prev[call], self.next[call]);
        self.next[p] = n;
        self.prev[n] = p;
        let (p, n) = (self.prev[ret], self.next[ret]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    fn unlift(&mut self, call: usize) {
        let ret = self.ret[call];
        let (p, n) = (self.prev[ret], self.next[ret]);
        self.next[p] = ret;
        if n != NIL {
            self.prev[n] = ret;
        }
        let (p, n) = (self.prev[call], self.next[call]);
        self.next[p] = call;
        self.prev[n] = call;
    }
}

fn bit(set: &[u64], i: usize) -> bool {
    set[i / 64] & (1 << (i % 64)) != 0
}

fn flip(set: &mut [u64], i: usize) {
    set[i / 64] ^= 1 << (i % 64);
}

/// Checks one key's history from `initial`.
pub fn check(initial: State, ops: &[Op], bound: Bound) -> Checked {
    let started = Instant::now();
    let mut list = Entries::new(ops);
    // The linearized set as a bitset, then two words for a state: a configuration, looked up
    // in the memo as one slice (no copy unless it is new).
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words + 2];
    let mut count = 0usize;
    let mut memo: HashSet<Box<[u64]>> = HashSet::new();
    let mut calls: Vec<(usize, State)> = Vec::new();
    let mut state = initial;
    let mut best: (usize, Vec<u64>, State) = (0, linearized.clone(), initial);
    let mut steps = 0u64;
    let entry_bytes = (words + 2) * 8 + MEMO_ENTRY_OVERHEAD;
    let mut entry = list.next[HEAD];
    let checked = |verdict, explored, counterexample, why: Option<String>| Checked {
        verdict,
        ops: ops.len(),
        explored,
        counterexample,
        why,
    };
    while list.next[HEAD] != NIL {
        steps += 1;
        if steps % 4096 == 0 && started.elapsed() > bound.time {
            let why = format!("gave up after {:?} ({} configurations explored)", bound.time, memo.len());
            return checked(Verdict::Unknown, memo.len(), None, Some(why));
        }
        if memo.len().saturating_mul(entry_bytes) > bound.bytes {
            let why = format!(
                "gave up at the memory bound of {} bytes ({} configurations explored)",
                bound.bytes,
                memo.len()
            );
            return checked(Verdict::Unknown, memo.len(), None, Some(why));
        }
        let i = list.op[entry];
        if list.ret[entry] != NIL {
            // A call: linearize it now if the model allows and this configuration is new.
            if let Some(next) = step(state, ops[i].input, ops[i].output) {
                flip(&mut linearized, i);
                linearized[words] = next.version as u64;
                linearized[words + 1] = u64::from(next.value);
                if !memo.contains(&linearized[..]) {
                    memo.insert(linearized.clone().into_boxed_slice());
                    calls.push((entry, state));
                    state = next;
                    count += 1;
                    if count > best.0 {
                        best = (count, linearized.clone(), state);
                    }
                    list.lift(entry);
                    entry = list.next[HEAD];
                    continue;
                }
                flip(&mut linearized, i);
            }
            entry = list.next[entry];
        } else {
            // A return whose call was not linearized: undo the last choice.
            let Some((call, before)) = calls.pop() else {
                let explored = memo.len();
                return checked(Verdict::Invalid, explored, Some(counterexample(ops, &best)), None);
            };
            state = before;
            count -= 1;
            flip(&mut linearized, list.op[call]);
            list.unlift(call);
            entry = list.next[call];
        }
    }
    checked(Verdict::Valid, memo.len(), None, None)
}

/// The counterexample at the deepest configuration `best` (count, linearized set, state):
/// the open operation that must end first, and those open beside it.
fn counterexample(ops: &[Op], best: &(usize, Vec<u64>, State)) -> Counterexample {
    let (count, set, state) = best;
    let open: Vec<usize> = (0..ops.len()).filter(|&i| !bit(set, i)).collect();
    let stuck = open
        .iter()
        .copied()
        .min_by_key(|&i| (ops[i].ret.unwrap_or(u64::MAX), ops[i].call))
        .expect("an invalid history leaves an operation open");
    let end = ops[stuck].ret.unwrap_or(u64::MAX);
    let mut concurrent: Vec<usize> = open.into_iter().filter(|&i| i != stuck && ops[i].call <= end).collect();
    concurrent.sort_by_key(|&i| (ops[i].call, ops[i].id));
    concurrent.truncate(8);
    Counterexample {
        linearized: *count,
        state: *state,
        stuck: ops[stuck].id,
        concurrent: concurrent.into_iter().map(|i| ops[i].id).collect(),
    }
}

/// Simulated histories, for the tests and the benchmark.
/// `n` operations of `clients` concurrent clients on a real register (from version 1, value 0): each takes effect at
/// a point inside its interval, so the history is linearizable by construction; some
/// writes are left unknown, one in a hundred (half of those never happen).
pub fn simulate(n: usize, clients: u64, seed: u64) -> Vec<Op> {
    let mut rng = super::Rng::new(seed);
    // Each client's intervals are sequential; points are chosen, then applied in order.
    let mut plans = Vec::new();
    let clients = clients.max(1);
    let mut free_at = vec![0u64; clients as usize];
    for id in 0..n as u64 {
        let c = rng.below(clients) as usize;
        let call = free_at[c] + rng.below(20);
        let point = call + 1 + rng.below(30);
        let ret = point + 1 + rng.below(30);
        free_at[c] = ret + 1;
        let kind = rng.below(10);
        let unknown = rng.below(100) == 0;
        let happens = !unknown || rng.below(2) == 0;
        plans.push((point, id, call, ret, kind, unknown, happens));
    }
    plans.sort_unstable();
    let mut state = State { version: 1, value: 0 };
    let mut ops = Vec::new();
    for (_, id, call, ret, kind, unknown, happens) in plans {
        let value = id as u32 + 1;
        let (input, output) = match kind {
            0..=3 => (Input::Read, Output::Read(state)),
            4..=6 => {
                if happens {
                    state = State { version: state.version + 1, value };
                }
                (Input::Write(value), if unknown { Output::Unknown } else { Output::Written(state.version) })
            }
            _ => {
                let expected = state.version - rng.below(2) as i64;
                let input = Input::Cas { expected, value };
                if expected != state.version {
                    (input, if unknown { Output::Unknown } else { Output::CasFailed })
                } else {
                    if happens {
                        state = State { version: state.version + 1, value };
                    }
                    (input, if unknown { Output::Unknown } else { Output::Written(state.version) })
                }
            }
        };
        let unknown = unknown && !matches!(input, Input::Read);
        ops.push(Op { id, call, ret: (!unknown).then_some(ret), input, output });
    }
    ops.sort_by_key(|o| o.id);
    ops
}

#[cfg(test)]
#[path = "checker_tests.rs"]
mod tests;
