//! Named scenarios of the group coordinator on a manual clock, the test fixture they share with
//! the model test (`model_tests.rs`), and tests of places where the coordinator once differed
//! from Kafka in ways that were bugs.

use std::future::Future;
use std::rc::Rc;

use bytes::Bytes;
use futures::future::LocalBoxFuture;
use futures::FutureExt;
use kafka_protocol::ResponseError as E;

use super::{GroupCoordinator, JoinParams, SyncParams};
use crate::clock::ManualClock;
use crate::config::GroupSettings;
use crate::group::state::{GroupState, JoinResult, SyncResult};
use crate::group::store::{LogRecord, OffsetsStore};

/// The shortest session timeout the tests allow.
const SESSION_MS_MIN: i32 = 1_000;

// A session is never shorter than the tick's longest pause between scans, so a session that
// starts between ticks (when a join phase completes or a waiting SyncGroup is answered) ends
// after the next scan: the tests (and the model test) can expect its expiry to the millisecond.
const _: () = assert!(super::timers::SCAN_INTERVAL_MS_MAX <= SESSION_MS_MIN as i64);

/// Group settings of the tests: sessions of 1 to 60 s, offsets kept for a week.
pub(super) fn settings(initial_rebalance_delay_ms: i64) -> GroupSettings {
    GroupSettings {
        initial_rebalance_delay_ms,
        session_timeout_ms_min: SESSION_MS_MIN,
        session_timeout_ms_max: 60_000,
        members_max: 100,
        offset_metadata_bytes_max: 4_096,
        offsets_retention_ms: 7 * 24 * 3_600_000,
        offsets_partitions: 1,
        offsets_segment_bytes: 1 << 20,
    }
}

/// Runs a test future on a glommio executor of its own.
pub(super) fn run<G, F, T>(make: G) -> T
where
    G: FnOnce() -> F + Send + 'static,
    F: Future<Output = T> + 'static,
    T: Send + 'static,
{
    strom_storage::testing::run_local(make)
}

/// A coordinator with its offsets log in a temporary directory and a manual clock installed on
/// the calling (executor) thread.
pub(super) struct Fixture {
    pub coordinator: Rc<GroupCoordinator>,
    pub clock: Rc<ManualClock>,
    _dir: tempfile::TempDir,
}

impl Fixture {
    pub fn new(settings: GroupSettings) -> Fixture {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let clock = ManualClock::install_at(1_700_000_000_000);
        let store = OffsetsStore::new(dir.path(), 1, 1 << 20, 0, false);
        Fixture {
            coordinator: GroupCoordinator::new(settings, store),
            clock,
            _dir: dir,
        }
    }

    /// Waits for the writes queued so far (one partition: one queue, in order), then closes.
    pub async fn close(self) {
        let c = &self.coordinator;
        let marker = LogRecord::Group {
            group: "fixture-close".into(),
            value: None,
        };
        c.store
            .write(c, vec![marker])
            .await
            .expect("the offsets log writes");
        c.close().await;
    }

    /// JoinGroup v3: a new dynamic member is added at once (no MEMBER_ID_REQUIRED round trip).
    fn join(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        metadata: &str,
    ) -> Pending<JoinResult> {
        self.join_version(3, member_id, instance_id, metadata)
    }

    fn join_version(
        &self,
        version: i16,
        member_id: &str,
        instance_id: Option<&str>,
        metadata: &str,
    ) -> Pending<JoinResult> {
        let params = JoinParams {
            version,
            group_id: "g".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 5_000,
            member_id: member_id.into(),
            instance_id: instance_id.map(String::from),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from(metadata.to_string()))],
            client_id: "client".into(),
            client_host: "/127.0.0.1".into(),
        };
        let c = self.coordinator.clone();
        Pending::start(async move { c.join(params).await })
    }

    fn sync(&self, j: &JoinResult, instance_id: Option<&str>) -> Pending<SyncResult> {
        let assignments = j
            .members
            .iter()
            .map(|m| {
                (
                    m.member_id.clone(),
                    Bytes::from(format!("to {}", m.member_id)),
                )
            })
            .collect();
        let params = SyncParams {
            group_id: "g".into(),
            generation: j.generation,
            member_id: j.member_id.clone(),
            instance_id: instance_id.map(String::from),
            protocol_type: None,
            protocol: None,
            assignments,
        };
        let c = self.coordinator.clone();
        Pending::start(async move { c.sync(params).await })
    }

    fn heartbeat(&self, j: &JoinResult, instance_id: Option<&str>) -> i16 {
        self.coordinator
            .heartbeat("g", j.generation, &j.member_id, instance_id)
    }

    /// Moves the clock and runs the coordinator's timers.
    fn advance(&self, ms: i64) {
        self.clock.advance(ms);
        self.coordinator.tick();
    }

    fn group<T>(&self, f: impl FnOnce(&crate::group::state::Group) -> T) -> T {
        f(self
            .coordinator
            .groups
            .borrow()
            .get("g")
            .expect("the group"))
    }

    /// A member joins alone and the group becomes stable (no initial delay).
    async fn stable_alone(&self, instance_id: Option<&str>) -> JoinResult {
        let j = self
            .join("", instance_id, "m")
            .now()
            .expect("the join completes at once");
        assert_eq!(j.error, 0);
        let s = self.sync(&j, instance_id).wait().await;
        assert_eq!(s.error, 0);
        j
    }
}

/// A request started on the coordinator (its first poll runs it) whose answer may come later.
struct Pending<T> {
    fut: Option<LocalBoxFuture<'static, T>>,
    answer: Option<T>,
}

impl<T: 'static> Pending<T> {
    fn start(fut: impl Future<Output = T> + 'static) -> Pending<T> {
        let mut p = Pending {
            fut: Some(fut.boxed_local()),
            answer: None,
        };
        p.poll();
        p
    }

    fn poll(&mut self) {
        if let Some(fut) = self.fut.as_mut() {
            if let Some(answer) = fut.now_or_never() {
                self.answer = Some(answer);
                self.fut = None;
            }
        }
    }

    /// The answer if it has come.
    fn now(&mut self) -> Option<T> {
        self.poll();
        self.answer.take()
    }

    async fn wait(mut self) -> T {
        match (self.answer.take(), self.fut.take()) {
            (Some(answer), _) => answer,
            (None, Some(fut)) => fut.await,
            (None, None) => panic!("the answer was taken already"),
        }
    }
}

const FENCED: i16 = E::FencedInstanceId.code();
const UNKNOWN: i16 = E::UnknownMemberId.code();
const REBALANCING: i16 = E::RebalanceInProgress.code();

#[test]
fn static_member_replacement_fences_the_old_instance() {
    run(|| async {
        let f = Fixture::new(settings(0));
        let old = f.stable_alone(Some("i")).await;

        // The instance starts again with no member id: it takes the place of the old member
        // (same subscription, stable group: no rebalance) and, as the leader, learns the
        // members without having to assign (KIP-814).
        let new = f.join("", Some("i"), "m").now().expect("answered at once");
        assert_eq!(new.error, 0);
        assert_ne!(new.member_id, old.member_id);
        assert_eq!(
            (new.generation, new.leader.as_str()),
            (1, new.member_id.as_str())
        );
        assert!(new.skip_assignment);
        assert_eq!(new.members.len(), 1);

        // Everything the old incarnation sends is fenced.
        assert_eq!(f.heartbeat(&old, Some("i")), FENCED);
        assert_eq!(
            f.sync(&old, Some("i")).now().expect("answered").error,
            FENCED
        );
        let rejoin = f
            .join(&old.member_id, Some("i"), "m")
            .now()
            .expect("answered");
        assert_eq!(rejoin.error, FENCED);
        let leave = f
            .coordinator
            .leave("g", &[(old.member_id.clone(), Some("i".into()))]);
        assert_eq!(leave, [FENCED]);
        f.group(|g| {
            assert!(g.is(GroupState::Stable));
            assert_eq!(g.members.keys().collect::<Vec<_>>(), [&new.member_id]);
        });

        // The new incarnation carries on with the stored assignment.
        assert_eq!(f.heartbeat(&new, Some("i")), 0);
        let s = f.sync(&new, Some("i")).wait().await;
        assert_eq!(
            (s.error, &s.assignment[..]),
            (0, format!("to {}", old.member_id).as_bytes())
        );

        // A request of the old incarnation that waits when a newer one joins is answered
        // with FENCED_INSTANCE_ID. (A member id handed out with MEMBER_ID_REQUIRED and not
        // yet used keeps the join phase open.)
        let mut other = f.join("", None, "d");
        assert_eq!(f.heartbeat(&new, Some("i")), REBALANCING);
        let pending = f.join_version(5, "", None, "p").now().expect("answered");
        assert_eq!(pending.error, E::MemberIdRequired.code());
        let mut waiting = f.join(&new.member_id, Some("i"), "m");
        let mut newest = f.join("", Some("i"), "m");
        assert_eq!(waiting.now().expect("answered").error, FENCED);
        assert!(newest.now().is_none(), "waits for the pending member");
        let mut last = f.join_version(5, &pending.member_id, None, "p");
        let (newest, other) = (
            newest.now().expect("everyone joined"),
            other.now().expect("answered"),
        );
        let last = last.now().expect("answered");
        assert_eq!((newest.error, other.error, last.error), (0, 0, 0));
        assert_eq!(
            (newest.generation, other.generation, last.generation),
            (2, 2, 2)
        );
        assert_eq!(
            newest.leader, newest.member_id,
            "the leader's place passed on"
        );
        f.close().await;
    });
}

#[test]
fn session_expiry_of_the_only_member_returns_the_group_to_empty() {
    run(|| async {
        let f = Fixture::new(settings(0));
        let j = f.stable_alone(None).await;
        // A session of 10 s is over once more than 10 s pass without a heartbeat.
        f.advance(10_000);
        f.group(|g| assert!(g.is(GroupState::Stable) && g.members.len() == 1));
        f.advance(1);
        f.group(|g| {
            assert!(g.is(GroupState::Empty));
            assert!(g.members.is_empty() && g.leader.is_none() && g.protocol.is_none());
            assert_eq!(g.generation, 2);
        });
        assert_eq!(f.heartbeat(&j, None), UNKNOWN);
        assert_eq!(f.sync(&j, None).now().expect("answered").error, UNKNOWN);
        assert_eq!(f.coordinator.describe("g").state, "Empty");
        f.close().await;
    });
}

#[test]
fn rebalance_timeout_removes_members_that_did_not_rejoin() {
    run(|| async {
        let f = Fixture::new(settings(0));
        let a = f.stable_alone(None).await;
        // A second member: a rebalance that both join.
        let mut e = f.join("", None, "e");
        assert_eq!(f.heartbeat(&a, None), REBALANCING);
        let a = f
            .join(&a.member_id, None, "m")
            .now()
            .expect("everyone joined");
        let e = e.now().expect("answered");
        assert_eq!((a.generation, e.generation, a.members.len()), (2, 2, 2));
        let mut sync_e = f.sync(&e, None);
        assert_eq!(f.sync(&a, None).wait().await.error, 0);
        assert_eq!(sync_e.now().expect("answered").error, 0);

        // A third member joins; e rejoins, a does not (its client is gone).
        f.advance(1_000);
        let mut b = f.join("", None, "b");
        let mut e_again = f.join(&e.member_id, None, "e");
        f.advance(4_999);
        assert!(
            b.now().is_none() && e_again.now().is_none(),
            "waiting for a"
        );
        f.group(|g| assert!(g.is(GroupState::PreparingRebalance) && g.members.len() == 3));
        // The rebalance timeout (the members' longest, 5 s) is up: a is dropped.
        f.advance(1);
        let (b, e) = (b.now().expect("answered"), e_again.now().expect("answered"));
        assert_eq!((b.error, e.error), (0, 0));
        assert_eq!((b.generation, e.generation), (3, 3));
        assert_eq!(e.leader, e.member_id, "the earliest remaining member leads");
        let listed: Vec<&str> = e.members.iter().map(|m| m.member_id.as_str()).collect();
        assert_eq!(listed, [e.member_id.as_str(), b.member_id.as_str()]);
        assert!(f.group(|g| !g.members.contains_key(&a.member_id)));
        assert_eq!(f.heartbeat(&a, None), UNKNOWN);
        f.close().await;
    });
}

// ---------------------------------------------------------------------------------------------
// Where the coordinator differed from Kafka in ways that were bugs. Each test shows what Kafka
// does (and failed before the fix); the reference model (`model_tests/reference.rs`) does the
// same.

/// Kafka's `onCompleteJoin` (`maybeElectNewJoinedLeader`): a leader that did not rejoin (a
/// static member kept through the rebalance) is replaced by a member that did, so that someone
/// receives the member list and assigns. Keeping the absent leader would leave nobody to
/// assign: the group would wait in CompletingRebalance until that member returned or its
/// session expired (static members usually have long sessions).
#[test]
fn a_leader_that_did_not_rejoin_is_replaced_by_a_member_that_did() {
    run(|| async {
        let f = Fixture::new(settings(0));
        let s = f.stable_alone(Some("s")).await;
        let mut d = f.join("", None, "d");
        // The static leader is restarting and misses the rebalance (5 s).
        f.advance(5_000);
        let d = d.now().expect("the rebalance timeout ends the join phase");
        assert_eq!((d.error, d.generation), (0, 2));
        assert!(
            f.group(|g| g.members.contains_key(&s.member_id)),
            "static members stay"
        );
        assert_eq!(d.leader, d.member_id, "the member that rejoined leads");
        assert_eq!(d.members.len(), 2, "and assigns for both");
        f.close().await;
    });
}

/// Kafka's `onCompleteJoin`: when no member rejoined (only static members that did not are
/// left), the join phase does not complete but starts again at the same generation, until a
/// member rejoins or the static members' sessions expire.
#[test]
fn a_join_phase_that_no_member_rejoined_starts_again() {
    run(|| async {
        let f = Fixture::new(settings(0));
        let s = f.stable_alone(Some("s")).await;
        let mut d = f.join("", None, "d");
        let d_id = f.group(|g| {
            let mut others = g.members.keys().filter(|id| **id != s.member_id);
            others.next().cloned().expect("d is a member")
        });
        assert_eq!(f.coordinator.leave("g", &[(d_id, None)]), [0]);
        assert_eq!(d.now().expect("answered").error, UNKNOWN);
        // The static member is restarting and misses the rebalance (5 s).
        f.advance(5_000);
        f.group(|g| {
            assert!(g.is(GroupState::PreparingRebalance) && g.generation == 1);
            assert!(g.members.contains_key(&s.member_id), "static members stay");
        });
        assert_eq!(f.heartbeat(&s, Some("s")), REBALANCING);
        f.advance(4_000);
        let s = f
            .join(&s.member_id, Some("s"), "m")
            .now()
            .expect("everyone joined");
        assert_eq!((s.error, s.generation), (0, 2));
        assert_eq!(s.leader, s.member_id);
        f.close().await;
    });
}

/// Kafka's `propagateAssignment` restarts the session of every member whose waiting SyncGroup
/// it answers (the assignment, or REBALANCE_IN_PROGRESS). Without that, a follower that waited
/// in SyncGroup longer than its session timeout (a slow leader) would be removed right after
/// receiving its assignment, and a new rebalance would start.
#[test]
fn answering_a_waiting_sync_group_restarts_the_session() {
    run(|| async {
        let f = Fixture::new(settings(0));
        let leader = f.stable_alone(None).await;
        let mut follower = f.join("", None, "f");
        assert_eq!(f.heartbeat(&leader, None), REBALANCING);
        let leader = f
            .join(&leader.member_id, None, "m")
            .now()
            .expect("everyone joined");
        let follower = follower.now().expect("answered");
        let mut waiting = f.sync(&follower, None);
        // The leader takes 11 s to assign (heartbeating meanwhile); the follower's session is 10 s.
        f.advance(6_000);
        assert_eq!(f.heartbeat(&leader, None), 0);
        f.advance(5_000);
        assert_eq!(f.sync(&leader, None).wait().await.error, 0);
        assert_eq!(waiting.now().expect("answered").error, 0);
        // (The coordinator looks at sessions at least once a second.)
        f.advance(1_000);
        f.group(|g| assert!(g.is(GroupState::Stable) && g.members.len() == 2));
        assert_eq!(f.heartbeat(&follower, None), 0);
        f.close().await;
    });
}

/// Kafka's `GroupMetadata.add`: the first member of a group without members sets the group's
/// protocol type. Keeping the type of the group's first member ever would make a group id used
/// by consumers and later (empty) by another kind of client report the old type and refuse
/// that client's second member with INCONSISTENT_GROUP_PROTOCOL.
#[test]
fn an_emptied_group_takes_the_protocol_type_of_its_next_first_member() {
    run(|| async {
        let f = Fixture::new(settings(0));
        let consumer = f.stable_alone(None).await;
        assert_eq!(
            f.coordinator
                .leave("g", &[(consumer.member_id.clone(), None)]),
            [0]
        );
        f.group(|g| assert!(g.is(GroupState::Empty)));
        let join = |member_id: &str| {
            let params = JoinParams {
                version: 3,
                group_id: "g".into(),
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 5_000,
                member_id: member_id.into(),
                instance_id: None,
                protocol_type: "connect".into(),
                protocols: vec![("sessioned".into(), Bytes::from_static(b"w"))],
                client_id: "worker".into(),
                client_host: "/127.0.0.1".into(),
            };
            let c = f.coordinator.clone();
            Pending::start(async move { c.join(params).await })
        };
        let first = join("").now().expect("alone: answered at once");
        assert_eq!(first.protocol_type.as_deref(), Some("connect"));
        let mut second = join("");
        assert!(
            second.now().is_none(),
            "the second worker is accepted and waits"
        );
        f.close().await;
    });
}
