use super::*;
use crate::cluster::control::{ControlCommand, ControlResponse, MemberSpec, MemberState};

fn spec(name: &str) -> MemberSpec {
    MemberSpec {
        name: name.into(),
        http_addr: format!("{name}:80"),
        cluster_addr: format!("{name}:90"),
        incarnation: 0,
        storage_id: 0,
    }
}

/// Two members, 4 vnodes; then a move of a vnode owned by member 0 to member 1.
fn with_move() -> (ControlState, Move) {
    let mut s = ControlState::default();
    let boot = ControlCommand::Bootstrap {
        vnodes: 4,
        members: vec![spec("a"), spec("b")],
    };
    assert_eq!(s.apply(&boot), ControlResponse::Done);
    let v = (0..4).find(|v| s.ring[*v as usize].owner == 0).unwrap_or(0);
    let begin = ControlCommand::BeginMove {
        vnode: v,
        to: 1,
        now_ms: 0,
    };
    assert_eq!(s.apply(&begin), ControlResponse::Done);
    let mv = s.moves[&v];
    (s, mv)
}

#[test]
fn source_fences_on_last_export_and_lifts_on_abort_only() {
    let (s, mv) = with_move();
    let before_move = {
        let mut older = s.clone();
        older.moves.clear();
        older.version = mv.begun_at - 1;
        older
    };
    let mut a = Ownership::new(0, [], 0);
    a.on_map(Arc::new(before_move.clone()));
    assert_eq!(a.access(mv.vnode), Access::Local { epoch: mv.epoch });
    let copy = ExportRequest { mv, last: false };
    assert_eq!(a.on_export_request(&copy), ExportDecision::Copy);
    let last = ExportRequest { mv, last: true };
    assert!(matches!(
        a.on_export_request(&last),
        ExportDecision::FenceThenExport(_)
    ));
    assert_eq!(a.access(mv.vnode), Access::Fenced);
    // The map from before the move (that `a` already has) does not lift the fence.
    assert_eq!(a.on_map(Arc::new(before_move)), Some(vec![]));
    assert_eq!(a.access(mv.vnode), Access::Fenced);
    // The abort does.
    let mut aborted = s.clone();
    let abort = ControlCommand::AbortMove {
        vnode: mv.vnode,
        move_id: mv.id,
    };
    assert_eq!(aborted.apply(&abort), ControlResponse::Done);
    assert_eq!(a.on_map(Arc::new(aborted)).map(|r| r.len()), Some(1));
    assert_eq!(a.access(mv.vnode), Access::Local { epoch: mv.epoch });
}

#[test]
fn commit_hands_the_vnode_over() {
    let (mut s, mv) = with_move();
    let mut a = Ownership::new(0, [], 0);
    let mut b = Ownership::new(1, [], 0);
    a.on_map(Arc::new(s.clone()));
    b.on_map(Arc::new(s.clone()));
    assert!(matches!(
        a.on_export_request(&ExportRequest { mv, last: true }),
        ExportDecision::FenceThenExport(_)
    ));
    assert_eq!(
        b.access(mv.vnode),
        Access::Remote {
            owner: 0,
            epoch: mv.epoch
        }
    );
    // Only the target commits, and only once the source has fenced the vnode; only the
    // source fences it.
    let commit_by = |by| ControlCommand::CommitMove {
        vnode: mv.vnode,
        move_id: mv.id,
        by: Some(by),
    };
    let fenced_by = |by| ControlCommand::MoveFenced {
        vnode: mv.vnode,
        move_id: mv.id,
        by,
    };
    assert!(matches!(
        s.apply(&commit_by(mv.from)),
        ControlResponse::Rejected(_)
    ));
    assert!(matches!(
        s.apply(&commit_by(mv.to)),
        ControlResponse::Rejected(_)
    ));
    assert!(matches!(
        s.apply(&fenced_by(mv.to)),
        ControlResponse::Rejected(_)
    ));
    assert_eq!(s.apply(&fenced_by(mv.from)), ControlResponse::Done);
    assert!(matches!(
        s.apply(&commit_by(mv.from)),
        ControlResponse::Rejected(_)
    ));
    let commit = commit_by(mv.to);
    assert_eq!(s.apply(&commit), ControlResponse::Done);
    // Over the transport, a peer proposes only its own steps.
    let state = s.clone();
    let named = |id| state.members[&id].spec.name.clone();
    assert!(commit.proposable_by(&named(mv.to), &state).is_ok());
    assert!(commit.proposable_by(&named(mv.from), &state).is_err());
    let begin = ControlCommand::BeginMove {
        vnode: mv.vnode,
        to: mv.from,
        now_ms: 0,
    };
    assert!(begin.proposable_by(&named(mv.to), &state).is_err());
    // An aborted move cannot commit afterwards, and a committed one cannot abort.
    let abort = ControlCommand::AbortMove {
        vnode: mv.vnode,
        move_id: mv.id,
    };
    assert!(matches!(s.apply(&abort), ControlResponse::Rejected(_)));
    let s = Arc::new(s);
    b.on_map(s.clone());
    assert_eq!(
        b.access(mv.vnode),
        Access::Local {
            epoch: mv.epoch + 1
        }
    );
    // A still has the old map: fenced, so never a second writer.
    assert_eq!(a.access(mv.vnode), Access::Fenced);
    a.on_map(s);
    assert_eq!(
        a.access(mv.vnode),
        Access::Remote {
            owner: 1,
            epoch: mv.epoch + 1
        }
    );
}

#[test]
fn a_source_that_lost_the_vnode_refuses_exports() {
    let (s, mut mv) = with_move();
    let mut a = Ownership::new(0, [], 0);
    a.on_map(Arc::new(s));
    mv.epoch += 1;
    assert_eq!(
        a.on_export_request(&ExportRequest { mv, last: true }),
        ExportDecision::Refuse
    );
}

#[test]
fn receiver_walks_copy_last_commit() {
    let (s, mv) = with_move();
    let mut r = Receiver::default();
    r.on_map(1, &s);
    let e = r.poll(0, 8);
    assert_eq!(e, vec![Effect::Export(ExportRequest { mv, last: false })]);
    assert!(r.poll(0, 8).is_empty(), "one effect at a time per move");
    r.on_failed(mv.id, Phase::Copy, 0);
    assert!(r.poll(10, 8).is_empty(), "backs off");
    assert_eq!(r.poll(10_000, 8).len(), 1);
    r.on_done(mv.id, Phase::Copy, 10_000);
    assert_eq!(
        r.poll(10_000, 8),
        vec![Effect::Export(ExportRequest { mv, last: true })]
    );
    r.on_done(mv.id, Phase::Last, 10_000);
    assert_eq!(r.poll(10_000, 8), vec![Effect::ProposeCommit(mv)]);
    let mut done = s.clone();
    done.apply(&ControlCommand::MoveFenced {
        vnode: mv.vnode,
        move_id: mv.id,
        by: mv.from,
    });
    done.apply(&ControlCommand::CommitMove {
        vnode: mv.vnode,
        move_id: mv.id,
        by: Some(mv.to),
    });
    r.on_map(1, &done);
    assert_eq!(r.in_flight(), 0);
}

#[test]
fn a_restarted_node_never_takes_an_older_map() {
    let (s, _) = with_move();
    let mut older = s.clone();
    older.version -= 1;
    let mut a = Ownership::new(0, [], s.version);
    assert!(
        a.on_map(Arc::new(older)).is_none(),
        "below the persisted floor"
    );
    assert_eq!(a.access(0), Access::Unknown);
    assert!(a.on_map(Arc::new(s)).is_some());
}

/// A `Join` that arrives late (a retried, duplicated or delayed proposal) must not re-admit a
/// member whose process has left since, nor roll back a newer start's addresses; a new start
/// of a left node does come back. (Simulation seeds 22995, 51812 and 52684 ended with a
/// member `Up` and empty after such a copy re-admitted a stopped node.)
#[test]
fn a_late_join_from_an_earlier_start_changes_nothing() {
    let mut s = ControlState::default();
    let boot = ControlCommand::Bootstrap {
        vnodes: 4,
        members: vec![spec("a"), spec("b")],
    };
    assert_eq!(s.apply(&boot), ControlResponse::Done);
    let start = |incarnation, http: &str| MemberSpec {
        incarnation,
        http_addr: http.into(),
        ..spec("c")
    };
    let ControlResponse::Member(c) = s.apply(&ControlCommand::Join(start(10, "c:1"))) else {
        panic!("join refused");
    };
    // A restart with a new address, then a late copy of the first start's join.
    s.apply(&ControlCommand::Join(start(20, "c:2")));
    s.apply(&ControlCommand::Join(start(10, "c:1")));
    assert_eq!(
        s.members[&c].spec.http_addr, "c:2",
        "an older start rolled back"
    );
    // It leaves; a late copy of the same start's join keeps it out.
    s.members.get_mut(&c).unwrap().state = MemberState::Left;
    s.apply(&ControlCommand::Join(start(20, "c:2")));
    assert_eq!(
        s.members[&c].state,
        MemberState::Left,
        "a late join re-admitted it"
    );
    s.apply(&ControlCommand::Join(start(30, "c:3")));
    assert_eq!(
        s.members[&c].state,
        MemberState::Joining,
        "a new start comes back"
    );
}
