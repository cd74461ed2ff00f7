//! Model-based test of the group coordinator (Kafka's classic group protocol): seeded random
//! clients send JoinGroup (new, known, static and restarted static members, changed metadata),
//! SyncGroup (leaders with assignments, followers), Heartbeat and LeaveGroup, while the clock
//! moves and the coordinator's `tick` expires sessions, pending members and rebalances. After
//! every step the answers that arrived (JoinGroup and SyncGroup answer later, when the
//! rebalance gets there: they run as futures polled after each step), the error codes, and the
//! group's state, generation, leader, members and pending members are compared with the
//! reference model in `model_tests/reference.rs`.
//!
//! Reproduce a failure with `STROM_GROUP_MODEL_SEED=<seed>` (and `STROM_GROUP_MODEL_OPS=<n>` for
//! a longer or shorter run).

mod answers;
mod clients;
mod reference;

use std::collections::{BTreeMap, BTreeSet};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::LocalBoxFuture;
use futures::task::noop_waker_ref;
use kafka_protocol::ResponseError as E;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::tests::{settings, Fixture};
use super::{GroupCoordinator, JoinParams, SyncParams};
use crate::clock::mono_ms;
use crate::group::state::GroupState;
use answers::{Answer, JoinReq, Observed, ObservedMember, ReqId, Settings, State, SyncReq};
use clients::Client;
use reference::Model;

const GROUP: &str = "g";
/// Operations per seed.
const OPS_PER_SEED: usize = 500;
/// Seeds run by `cargo test` (optimized builds run more: the CI profile is optimized).
const SEEDS: u64 = if cfg!(debug_assertions) { 25 } else { 250 };
/// group.max.size of the test: below the client count, so GROUP_MAX_SIZE_REACHED happens.
const MEMBERS_MAX: usize = 6;
/// Most outcomes of the coordinator the model keeps open at once.
const CANDIDATES_MAX: usize = 512;
/// How long the driver waits for a leader's SyncGroup to store the assignment.
const STORE_WAIT: Duration = Duration::from_secs(20);

/// One step: a request of a client (by its key in `Driver::clients`), or time passing.
enum Op {
    Join(usize, JoinReq),
    Sync(usize, SyncReq),
    Heartbeat {
        member_id: String,
        generation: i32,
        instance_id: Option<String>,
        client: usize,
    },
    Leave {
        members: Vec<(String, Option<String>)>,
        client: Option<usize>,
    },
    Tick {
        advance_ms: i64,
    },
}

#[derive(Default, Debug)]
struct Stats {
    ops: u64,
    joins: u64,
    syncs: u64,
    heartbeats: u64,
    leaves: u64,
    ticks: u64,
    /// Error code -> how often an answer or code carried it.
    codes: BTreeMap<i16, u64>,
    /// Steps that ended in each state (Empty, PreparingRebalance, CompletingRebalance, Stable).
    states: [u64; 4],
    /// Members that a tick removed (session expired, or not rejoined in time).
    members_gone_in_ticks: u64,
    candidates_max: usize,
}

/// Runs one seed: the clients, the coordinator, and the model's possible states.
struct Driver {
    seed: u64,
    rng: StdRng,
    fixture: Fixture,
    clients: BTreeMap<usize, Client>,
    next_client: usize,
    /// JoinGroup and SyncGroup requests not answered yet.
    outstanding: BTreeMap<ReqId, LocalBoxFuture<'static, Answer>>,
    next_req: ReqId,
    /// Every state of the model consistent with what the coordinator did so far (more than
    /// one where the coordinator may legitimately differ, until its answers tell them apart).
    candidates: Vec<Model>,
    /// Member ids the coordinator has handed out (a new one is the id a join made up).
    seen_ids: BTreeSet<String>,
    last_members: BTreeSet<String>,
    log: Vec<String>,
    /// Print every step (STROM_GROUP_MODEL_TRACE=1).
    trace: bool,
    stats: Stats,
}

fn poll_once(fut: &mut LocalBoxFuture<'static, Answer>) -> Option<Answer> {
    match fut
        .as_mut()
        .poll(&mut Context::from_waker(noop_waker_ref()))
    {
        Poll::Ready(a) => Some(a),
        Poll::Pending => None,
    }
}

fn observe(c: &GroupCoordinator) -> Observed {
    let groups = c.groups.borrow();
    let Some(g) = groups.get(GROUP) else {
        return Observed::absent();
    };
    let state = match g.state {
        GroupState::Empty => State::Empty,
        GroupState::PreparingRebalance => State::PreparingRebalance,
        GroupState::CompletingRebalance => State::CompletingRebalance,
        GroupState::Stable => State::Stable,
        GroupState::Dead => panic!("the group is Dead"),
    };
    Observed {
        exists: true,
        state: Some(state),
        generation: g.generation,
        leader: g.leader.clone(),
        protocol_type: g.protocol_type.clone(),
        protocol: g.protocol.clone(),
        members: g
            .members
            .iter()
            .map(|(id, m)| {
                let observed = ObservedMember {
                    instance_id: m.instance_id.clone(),
                    protocols: m.protocols.clone(),
                    awaiting_join: m.join_waiter.is_some(),
                    awaiting_sync: m.sync_waiter.is_some(),
                    assignment: m.assignment.clone(),
                };
                (id.clone(), observed)
            })
            .collect(),
        pending: g.pending.keys().cloned().collect(),
        instances: g.instances.clone().into_iter().collect(),
    }
}

/// What differs between the model's expectation and what happened; None if nothing.
fn difference(
    expected: (&BTreeMap<ReqId, Answer>, &Option<Vec<i16>>, &Observed),
    actual: (&BTreeMap<ReqId, Answer>, &Option<Vec<i16>>, &Observed),
) -> Option<String> {
    let mut out = String::new();
    if expected.0 != actual.0 {
        out += &format!(
            "  answers: model {:?}\n       coordinator {:?}\n",
            expected.0, actual.0
        );
    }
    if expected.1 != actual.1 {
        out += &format!(
            "  codes: model {:?}, coordinator {:?}\n",
            expected.1, actual.1
        );
    }
    let (e, a) = (expected.2, actual.2);
    macro_rules! field {
        ($name:ident) => {
            if e.$name != a.$name {
                out += &format!(
                    "  {}: model {:?}\n       coordinator {:?}\n",
                    stringify!($name),
                    e.$name,
                    a.$name
                );
            }
        };
    }
    field!(exists);
    field!(state);
    field!(generation);
    field!(leader);
    field!(protocol_type);
    field!(protocol);
    field!(members);
    field!(pending);
    field!(instances);
    (!out.is_empty()).then_some(out)
}

impl Driver {
    fn new(seed: u64) -> Driver {
        let mut rng = StdRng::seed_from_u64(seed);
        let initial_delay_ms = [0, 0, 250, 3_000][rng.gen_range(0..4)];
        let mut group_settings = settings(initial_delay_ms);
        group_settings.members_max = MEMBERS_MAX;
        let model_settings = Settings {
            initial_delay_ms,
            session_ms_min: group_settings.session_timeout_ms_min,
            session_ms_max: group_settings.session_timeout_ms_max,
            members_max: MEMBERS_MAX,
        };
        Driver {
            seed,
            rng,
            fixture: Fixture::new(group_settings),
            clients: BTreeMap::new(),
            next_client: 0,
            outstanding: BTreeMap::new(),
            next_req: 0,
            candidates: vec![Model::new(model_settings)],
            seen_ids: BTreeSet::new(),
            last_members: BTreeSet::new(),
            log: Vec::new(),
            trace: std::env::var_os("STROM_GROUP_MODEL_TRACE").is_some(),
            stats: Stats::default(),
        }
    }

    fn fail(&self, what: &str) -> ! {
        let tail = self.log.len().saturating_sub(40);
        panic!(
            "group model, seed {seed}: {what}\nlast operations:\n{ops}\nreproduce with \
             STROM_GROUP_MODEL_SEED={seed} cargo test -p strom-broker --lib group_model",
            seed = self.seed,
            ops = self.log[tail..].join("\n"),
        );
    }

    fn describe(&self, op: &Op) -> String {
        let now = mono_ms();
        let who = |c: &usize| {
            let c = &self.clients[c];
            format!(
                "{}{}",
                c.name,
                c.instance_id
                    .as_ref()
                    .map(|i| format!("/{i}"))
                    .unwrap_or_default()
            )
        };
        match op {
            Op::Join(c, r) => format!(
                "t={now} join #{} {} member={:?} v{} session={} rebalance={} protocols={:?}",
                r.id,
                who(c),
                r.member_id,
                r.version,
                r.session_ms,
                r.rebalance_ms,
                r.protocols
            ),
            Op::Sync(c, r) => format!(
                "t={now} sync #{} {} member={:?} generation={} assignments={:?}",
                r.id,
                who(c),
                r.member_id,
                r.generation,
                r.assignments
            ),
            Op::Heartbeat {
                member_id,
                generation,
                client,
                ..
            } => format!(
                "t={now} heartbeat {} member={member_id:?} generation={generation}",
                who(client)
            ),
            Op::Leave { members, .. } => format!("t={now} leave {members:?}"),
            Op::Tick { advance_ms } => format!("t={now} advance {advance_ms} ms and tick"),
        }
    }

    async fn step(&mut self, op: Op) {
        self.log.push(self.describe(&op));
        self.stats.ops += 1;
        let coordinator = self.fixture.coordinator.clone();
        let mut answers: BTreeMap<ReqId, Answer> = BTreeMap::new();
        let mut codes = None;
        match &op {
            Op::Join(client, r) => {
                self.stats.joins += 1;
                let params = JoinParams {
                    version: r.version,
                    group_id: GROUP.into(),
                    session_timeout_ms: r.session_ms,
                    rebalance_timeout_ms: r.rebalance_ms,
                    member_id: r.member_id.clone(),
                    instance_id: r.instance_id.clone(),
                    protocol_type: "consumer".into(),
                    protocols: r.protocols.clone(),
                    client_id: self.clients[client].name.clone(),
                    client_host: "/127.0.0.1".into(),
                };
                let c = coordinator.clone();
                let fut = Box::pin(async move { Answer::Join(c.join(params).await.into()) });
                self.start(*client, r.id, fut, &mut answers, true, false)
                    .await;
            }
            Op::Sync(client, r) => {
                self.stats.syncs += 1;
                let completes =
                    self.candidates[0].sync_completes_rebalance(&r.member_id, r.generation);
                if self
                    .candidates
                    .iter()
                    .any(|m| m.sync_completes_rebalance(&r.member_id, r.generation) != completes)
                {
                    self.fail(
                        "the model's outcomes disagree on whether a SyncGroup ends the rebalance",
                    );
                }
                let params = SyncParams {
                    group_id: GROUP.into(),
                    generation: r.generation,
                    member_id: r.member_id.clone(),
                    instance_id: r.instance_id.clone(),
                    protocol_type: Some("consumer".into()),
                    protocol: r.protocol.clone(),
                    assignments: r.assignments.clone(),
                };
                let c = coordinator.clone();
                let fut = Box::pin(async move { Answer::Sync(c.sync(params).await) });
                self.start(*client, r.id, fut, &mut answers, false, completes)
                    .await;
            }
            Op::Heartbeat {
                member_id,
                generation,
                instance_id,
                ..
            } => {
                self.stats.heartbeats += 1;
                let code =
                    coordinator.heartbeat(GROUP, *generation, member_id, instance_id.as_deref());
                codes = Some(vec![code]);
            }
            Op::Leave { members, .. } => {
                self.stats.leaves += 1;
                codes = Some(coordinator.leave(GROUP, members));
            }
            Op::Tick { advance_ms } => {
                self.stats.ticks += 1;
                self.fixture.clock.advance(*advance_ms);
                coordinator.tick();
            }
        }
        let ids: Vec<ReqId> = self.outstanding.keys().copied().collect();
        for id in ids {
            let fut = self.outstanding.get_mut(&id).expect("outstanding");
            if let Some(answer) = poll_once(fut) {
                self.outstanding.remove(&id);
                answers.insert(id, answer);
            }
        }
        let observed = observe(&coordinator);
        if self.trace {
            eprintln!(
                "{}\n    -> {:?} gen {} members {} answers {:?} codes {:?}",
                self.log.last().expect("logged"),
                observed.state,
                observed.generation,
                observed.members.len(),
                answers
                    .iter()
                    .map(|(id, a)| match a {
                        Answer::Join(j) => (*id, j.error),
                        Answer::Sync(s) => (*id, s.error),
                    })
                    .collect::<Vec<_>>(),
                codes
            );
        }
        self.check(&op, &answers, &codes, &observed);
        self.learn(&op, &answers, &codes, &observed);
    }

    /// Starts a JoinGroup or SyncGroup: its first poll runs the request; a leader's SyncGroup
    /// that ends the rebalance is awaited (its assignment is stored first).
    async fn start(
        &mut self,
        client: usize,
        id: ReqId,
        mut fut: LocalBoxFuture<'static, Answer>,
        answers: &mut BTreeMap<ReqId, Answer>,
        is_join: bool,
        wait: bool,
    ) {
        let c = self.clients.get_mut(&client).expect("client");
        if is_join {
            c.join_req = Some(id);
        } else {
            c.sync_req = Some(id);
        }
        if let Some(answer) = poll_once(&mut fut) {
            answers.insert(id, answer);
            return;
        }
        if wait {
            let timeout = glommio::timer::sleep(STORE_WAIT);
            match futures::future::select(fut, Box::pin(timeout)).await {
                futures::future::Either::Left((answer, _)) => {
                    answers.insert(id, answer);
                }
                futures::future::Either::Right(_) => self.fail(
                    "the leader's SyncGroup did not complete after its assignment was stored",
                ),
            }
            return;
        }
        self.outstanding.insert(id, fut);
    }

    fn check(
        &mut self,
        op: &Op,
        answers: &BTreeMap<ReqId, Answer>,
        codes: &Option<Vec<i16>>,
        observed: &Observed,
    ) {
        let now = mono_ms();
        let known: BTreeSet<&String> = observed
            .members
            .keys()
            .chain(observed.pending.iter())
            .collect();
        let fresh: Vec<String> = known
            .into_iter()
            .filter(|id| !self.seen_ids.contains(*id))
            .cloned()
            .collect();
        if fresh.len() > 1 {
            self.fail(&format!("one step made up several member ids: {fresh:?}"));
        }
        let fresh = fresh.into_iter().next();
        if fresh.is_some() && !matches!(op, Op::Join(..)) {
            self.fail(&format!(
                "a member id appeared without a JoinGroup: {fresh:?}"
            ));
        }
        let mut kept: Vec<Model> = Vec::new();
        let mut first_difference = None;
        for candidate in &self.candidates {
            let outcomes: Vec<(Model, Option<Vec<i16>>)> = match op {
                Op::Join(_, r) => {
                    let mut m = candidate.clone();
                    match m.join(now, r, fresh.as_deref()) {
                        Ok(()) => vec![(m, None)],
                        Err(e) => {
                            first_difference.get_or_insert(format!("  {e}\n"));
                            Vec::new()
                        }
                    }
                }
                Op::Sync(_, r) => {
                    let mut m = candidate.clone();
                    m.sync(now, r);
                    vec![(m, None)]
                }
                Op::Heartbeat {
                    member_id,
                    generation,
                    instance_id,
                    ..
                } => {
                    let mut m = candidate.clone();
                    let code = m.heartbeat(now, member_id, *generation, instance_id.as_deref());
                    vec![(m, Some(vec![code]))]
                }
                Op::Leave { members, .. } => {
                    let mut m = candidate.clone();
                    let codes = m.leave(now, members);
                    vec![(m, Some(codes))]
                }
                Op::Tick { .. } => candidate.tick(now).into_iter().map(|m| (m, None)).collect(),
            };
            for (mut m, expected_codes) in outcomes {
                let expected = std::mem::take(&mut m.answers);
                let model_view = m.observed();
                match difference(
                    (&expected, &expected_codes, &model_view),
                    (answers, codes, observed),
                ) {
                    None => {
                        if !kept.contains(&m) {
                            kept.push(m);
                        }
                    }
                    Some(d) => {
                        first_difference.get_or_insert(d);
                    }
                }
            }
        }
        if kept.is_empty() {
            let d = first_difference.unwrap_or_default();
            self.fail(&format!(
                "op {}: the coordinator differs from the model:\n{d}",
                self.log.len() - 1
            ));
        }
        if kept.len() > CANDIDATES_MAX {
            self.fail(&format!("{} outcomes open at once", kept.len()));
        }
        self.stats.candidates_max = self.stats.candidates_max.max(kept.len());
        self.candidates = kept;
        self.seen_ids.extend(observed.members.keys().cloned());
        self.seen_ids.extend(observed.pending.iter().cloned());
        if let Some(f) = fresh {
            self.seen_ids.insert(f);
        }
    }

    /// Runs `ops` steps, then closes the fixture.
    async fn run(mut self, ops: usize) -> Stats {
        for _ in 0..2 {
            self.add_client(None);
        }
        for _ in 0..ops {
            let op = self.next_op();
            self.step(op).await;
        }
        // Requests still waiting are dropped with the coordinator.
        self.outstanding.clear();
        let Driver { fixture, stats, .. } = self;
        fixture.close().await;
        stats
    }
}

#[test]
fn group_model_matches_the_coordinator() {
    let seed: Option<u64> = std::env::var("STROM_GROUP_MODEL_SEED")
        .ok()
        .map(|s| s.parse().expect("STROM_GROUP_MODEL_SEED is a number"));
    let ops: usize = std::env::var("STROM_GROUP_MODEL_OPS")
        .ok()
        .map_or(OPS_PER_SEED, |s| {
            s.parse().expect("STROM_GROUP_MODEL_OPS is a number")
        });
    let started = Instant::now();
    let (seeds, total) = super::tests::run(move || async move {
        let seeds: Vec<u64> = match seed {
            Some(s) => vec![s],
            None => (0..SEEDS).collect(),
        };
        let mut total = Stats::default();
        for &seed in &seeds {
            let stats = Driver::new(seed).run(ops).await;
            total.ops += stats.ops;
            total.joins += stats.joins;
            total.syncs += stats.syncs;
            total.heartbeats += stats.heartbeats;
            total.leaves += stats.leaves;
            total.ticks += stats.ticks;
            for (t, n) in total.states.iter_mut().zip(stats.states) {
                *t += n;
            }
            total.members_gone_in_ticks += stats.members_gone_in_ticks;
            total.candidates_max = total.candidates_max.max(stats.candidates_max);
            for (code, n) in stats.codes {
                *total.codes.entry(code).or_default() += n;
            }
        }
        (seeds.len(), total)
    });
    eprintln!(
        "group model: {seeds} seeds x {ops} ops in {:?}: {total:?}",
        started.elapsed()
    );
    if seed.is_none() {
        // The run reached the states and answers it is meant to check.
        assert!(total.states.iter().all(|n| *n > 0), "{total:?}");
        assert!(total.members_gone_in_ticks > 0, "{total:?}");
        for code in [
            E::UnknownMemberId,
            E::IllegalGeneration,
            E::RebalanceInProgress,
            E::FencedInstanceId,
            E::MemberIdRequired,
            E::InconsistentGroupProtocol,
            E::GroupMaxSizeReached,
        ] {
            assert!(
                total.codes.contains_key(&code.code()),
                "never saw {code:?}: {total:?}"
            );
        }
    }
}
