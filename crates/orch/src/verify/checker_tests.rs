//! The checker on classic histories (the shapes of Knossos's and Porcupine's test cases,
//! written as our own register with versions), on histories with unknown outcomes, on
//! simulated executions, and against its bound.

use super::*;

const INIT: State = State { version: 1, value: 0 };

fn s(version: i64, value: u32) -> State {
    State { version, value }
}

/// An operation `id` over `[call, ret]` (`ret` 0: unknown outcome).
fn op(id: u64, call: u64, ret: u64, input: Input, output: Output) -> Op {
    Op { id, call, ret: (ret != 0).then_some(ret), input, output }
}

fn read(id: u64, call: u64, ret: u64, seen: State) -> Op {
    op(id, call, ret, Input::Read, Output::Read(seen))
}

fn write(id: u64, call: u64, ret: u64, value: u32, version: Option<i64>) -> Op {
    op(id, call, ret, Input::Write(value), version.map_or(Output::Unknown, Output::Written))
}

fn cas(id: u64, call: u64, ret: u64, expected: i64, value: u32, out: Output) -> Op {
    op(id, call, ret, Input::Cas { expected, value }, out)
}

fn verdict(ops: &[Op]) -> Verdict {
    check(INIT, ops, Bound::default()).verdict
}

#[test]
fn the_model_steps() {
    assert_eq!(step(INIT, Input::Read, Output::Read(INIT)), Some(INIT));
    assert_eq!(step(INIT, Input::Read, Output::Read(s(2, 0))), None);
    assert_eq!(step(INIT, Input::Write(3), Output::Written(2)), Some(s(2, 3)));
    assert_eq!(step(INIT, Input::Write(3), Output::Written(5)), None);
    assert_eq!(step(INIT, Input::Cas { expected: 1, value: 4 }, Output::Written(2)), Some(s(2, 4)));
    assert_eq!(step(INIT, Input::Cas { expected: 2, value: 4 }, Output::Written(3)), None);
    assert_eq!(step(INIT, Input::Cas { expected: 2, value: 4 }, Output::CasFailed), Some(INIT));
    assert_eq!(step(INIT, Input::Cas { expected: 1, value: 4 }, Output::CasFailed), None);
    // An unknown cas happens if it can, and is a no-op if it cannot.
    assert_eq!(step(INIT, Input::Cas { expected: 1, value: 4 }, Output::Unknown), Some(s(2, 4)));
    assert_eq!(step(INIT, Input::Cas { expected: 7, value: 4 }, Output::Unknown), Some(INIT));
}

#[test]
fn classic_histories() {
    let cases: Vec<(&str, Vec<Op>, Verdict)> = vec![
        ("empty", vec![], Verdict::Valid),
        ("sequential write then read", vec![write(1, 0, 10, 1, Some(2)), read(2, 20, 30, s(2, 1))], Verdict::Valid),
        // Knossos's stale read: a read that begins after a write completed sees the old value.
        ("stale read", vec![write(1, 0, 10, 1, Some(2)), read(2, 20, 30, INIT)], Verdict::Invalid),
        // A read concurrent with a write may see either side of it.
        ("read concurrent sees old", vec![write(1, 0, 30, 1, Some(2)), read(2, 10, 20, INIT)], Verdict::Valid),
        ("read concurrent sees new", vec![write(1, 0, 30, 1, Some(2)), read(2, 10, 20, s(2, 1))], Verdict::Valid),
        // Porcupine's inversion: two reads in sequence, both concurrent with one write, see
        // the new value and then the old one.
        (
            "new then old",
            vec![write(1, 0, 100, 1, Some(2)), read(2, 10, 20, s(2, 1)), read(3, 30, 40, INIT)],
            Verdict::Invalid,
        ),
        (
            "old then new",
            vec![write(1, 0, 100, 1, Some(2)), read(2, 10, 20, INIT), read(3, 30, 40, s(2, 1))],
            Verdict::Valid,
        ),
        // Two concurrent writes: the reads after both must agree on one order.
        (
            "two writes, one order",
            vec![
                write(1, 0, 50, 1, Some(2)),
                write(2, 5, 55, 2, Some(3)),
                read(3, 60, 70, s(3, 2)),
                read(4, 80, 90, s(3, 2)),
            ],
            Verdict::Valid,
        ),
        (
            "two writes, versions contradict values",
            vec![write(1, 0, 50, 1, Some(2)), write(2, 5, 55, 2, Some(3)), read(3, 60, 70, s(3, 1))],
            Verdict::Invalid,
        ),
        // The lost update a broken version check makes: two cas expecting version 1 both win.
        (
            "two cas on one version both succeed",
            vec![cas(1, 0, 50, 1, 1, Output::Written(2)), cas(2, 5, 55, 1, 2, Output::Written(2))],
            Verdict::Invalid,
        ),
        (
            "two cas on one version, one wins",
            vec![cas(1, 0, 50, 1, 1, Output::Written(2)), cas(2, 5, 55, 1, 2, Output::CasFailed)],
            Verdict::Valid,
        ),
        ("cas refused though the version matched", vec![cas(1, 0, 10, 1, 1, Output::CasFailed)], Verdict::Invalid),
        (
            "cas after a write, on the new version",
            vec![write(1, 0, 10, 1, Some(2)), cas(2, 20, 30, 2, 2, Output::Written(3)), read(3, 40, 50, s(3, 2))],
            Verdict::Valid,
        ),
        ("a write answering a skipped version", vec![write(1, 0, 10, 1, Some(3))], Verdict::Invalid),
    ];
    for (name, ops, expected) in cases {
        assert_eq!(verdict(&ops), expected, "{name}");
    }
}

#[test]
fn unknown_outcomes_may_or_may_not_happen() {
    let cases: Vec<(&str, Vec<Op>, Verdict)> = vec![
        ("an unknown write never seen", vec![write(1, 0, 0, 1, None), read(2, 20, 30, INIT)], Verdict::Valid),
        ("an unknown write seen", vec![write(1, 0, 0, 1, None), read(2, 20, 30, s(2, 1))], Verdict::Valid),
        // It stays open until the end: it may take effect long after the client gave up.
        (
            "an unknown write seen late",
            vec![write(1, 0, 0, 1, None), read(2, 20, 30, INIT), read(3, 40, 50, s(2, 1))],
            Verdict::Valid,
        ),
        (
            "an unknown write seen, then unseen",
            vec![write(1, 0, 0, 1, None), read(2, 20, 30, s(2, 1)), read(3, 40, 50, INIT)],
            Verdict::Invalid,
        ),
        // But not before it was called.
        ("an unknown write seen too early", vec![read(1, 0, 10, s(2, 1)), write(2, 20, 0, 1, None)], Verdict::Invalid),
        (
            "an unknown cas that lost",
            vec![
                cas(1, 0, 0, 1, 1, Output::Unknown),
                write(2, 5, 15, 2, Some(2)),
                read(3, 20, 30, s(2, 2)),
                read(4, 40, 50, s(2, 2)),
            ],
            Verdict::Valid,
        ),
        (
            "an unknown cas that won after a write",
            vec![cas(1, 0, 0, 2, 1, Output::Unknown), write(2, 5, 15, 2, Some(2)), read(3, 20, 30, s(3, 1))],
            Verdict::Valid,
        ),
    ];
    for (name, ops, expected) in cases {
        assert_eq!(verdict(&ops), expected, "{name}");
    }
}

#[test]
fn the_counterexample_names_the_stuck_read_and_the_state() {
    let ops = [
        write(1, 0, 10, 1, Some(2)),
        write(2, 20, 30, 2, Some(3)),
        read(3, 25, 40, s(3, 2)),
        read(4, 50, 60, s(2, 1)),
        read(5, 55, 70, s(3, 2)),
        read(6, 52, 80, s(2, 1)),
    ];
    let checked = check(INIT, &ops, Bound::default());
    assert_eq!(checked.verdict, Verdict::Invalid);
    let cx = checked.counterexample.unwrap();
    assert_eq!(cx.stuck, 4, "{cx:?}");
    assert_eq!(cx.state, s(3, 2));
    // Both writes and the reads that saw the second (one began before the stale read ended).
    assert_eq!(cx.linearized, 4);
    // The other stale read, open beside it.
    assert_eq!(cx.concurrent, vec![6]);
}

#[test]
fn simulated_executions_are_valid_and_a_changed_read_is_caught() {
    for seed in 1..=20 {
        let mut ops = simulate(300, 5, seed);
        let checked = check(INIT, &ops, Bound::default());
        assert_eq!(checked.verdict, Verdict::Valid, "seed {seed}: {checked:?}");
        // A read that reports a version one ahead of what it saw, with no write in reach,
        // cannot be explained: the last read, made to see a version never written.
        let last = ops.iter().rposition(|o| o.input == Input::Read).unwrap();
        ops[last].output = Output::Read(State { version: 1_000_000, value: 0 });
        let broken = check(INIT, &ops, Bound::default());
        assert_eq!(broken.verdict, Verdict::Invalid, "seed {seed}");
        assert!(broken.counterexample.is_some());
    }
}

#[test]
fn simulating_with_no_clients_is_one_client() {
    assert_eq!(simulate(50, 0, 7), simulate(50, 1, 7));
}

#[test]
fn the_bound_gives_unknown_instead_of_running_on() {
    // Twenty concurrent writes of unknown outcome, then a read no order explains: the
    // search would try every subset and order of the writes before saying invalid.
    let mut ops: Vec<Op> = (1..=20).map(|i| write(i, i, 0, i as u32, None)).collect();
    ops.push(read(100, 200, 210, s(50, 7)));
    // The bound is in bytes: 21 operations are one word of bitset, two of state.
    let per_entry = 3 * 8 + MEMO_ENTRY_OVERHEAD;
    let bounded = check(INIT, &ops, Bound { bytes: 10_000 * per_entry, time: Duration::from_secs(60) });
    assert_eq!(bounded.verdict, Verdict::Unknown);
    assert!(bounded.explored <= 10_001, "{bounded:?}");
    assert!(
        bounded.why.as_deref().is_some_and(|w| w.contains(&format!("{} bytes", 10_000 * per_entry))),
        "{bounded:?}"
    );
    // A wider bitset (1000 more operations, never reached: they come after the stuck read)
    // holds the same bytes to fewer configurations.
    let mut long = ops.clone();
    long.extend((0..1000).map(|i| read(1000 + i, 1000 + 2 * i, 1001 + 2 * i, s(1, 0))));
    let wide = check(INIT, &long, Bound { bytes: 10_000 * per_entry, time: Duration::from_secs(60) });
    assert_eq!(wide.verdict, Verdict::Unknown);
    assert!(wide.explored < 10_000 / 2, "{wide:?}");
    let timed = check(INIT, &ops, Bound { bytes: usize::MAX, time: Duration::ZERO });
    assert_eq!(timed.verdict, Verdict::Unknown);
    // The verdict of several keys is the worst of them.
    assert_eq!(Verdict::combine([Verdict::Valid, Verdict::Unknown]), Verdict::Unknown);
    assert_eq!(Verdict::combine([Verdict::Invalid, Verdict::Unknown]), Verdict::Invalid);
    assert_eq!(Verdict::combine([]), Verdict::Valid);
}
