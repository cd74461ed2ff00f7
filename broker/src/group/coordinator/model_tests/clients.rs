//! The model test's clients: what each one knows, the requests it sends (the steps the protocol
//! asks for, and random ones: restarts, changed metadata, stale generations, leaves, stray
//! requests of old incarnations), and what it learns from the answers.

use std::collections::BTreeMap;

use bytes::Bytes;
use kafka_protocol::ResponseError as E;
use rand::Rng;

use super::answers::{Answer, JoinReq, Observed, ReqId, SyncReq};
use super::{Driver, Op};
use crate::clock::mono_ms;

/// Clients (incarnations included) a seed keeps at once.
const CLIENTS_MAX: usize = 9;
/// Static members' group.instance.id values.
const INSTANCES: [&str; 3] = ["i0", "i1", "i2"];
/// What clients subscribe with (protocol names in `answers::PROTOCOL_ORDER`).
const SUBSCRIPTIONS: [&[&str]; 4] = [
    &["range", "roundrobin"],
    &["range", "roundrobin", "sticky"],
    &["range"],
    &["roundrobin", "sticky"],
];

/// One client process (a static member's restart is a new client with the same instance id).
pub(super) struct Client {
    /// The client id, also the prefix of the member ids it gets.
    pub(super) name: String,
    pub(super) instance_id: Option<String>,
    /// JoinGroup version: from v4 a new dynamic member first gets MEMBER_ID_REQUIRED.
    pub(super) version: i16,
    /// Empty until it has one.
    pub(super) member_id: String,
    /// Of its last successful JoinGroup; -1 before one.
    pub(super) generation: i32,
    /// It must send JoinGroup (it started, or was told to rejoin).
    pub(super) rejoin: bool,
    /// It has its assignment for `generation`.
    pub(super) synced: bool,
    /// From its last JoinGroup answer: whether it leads, and the members it assigns to.
    pub(super) leader: bool,
    pub(super) known_members: Vec<String>,
    pub(super) protocol: Option<String>,
    /// Index into `SUBSCRIPTIONS`.
    pub(super) subscription: usize,
    /// Changed to change the client's metadata (its user data) but not its protocols.
    pub(super) metadata_epoch: u32,
    pub(super) session_ms: i32,
    pub(super) rebalance_ms: i32,
    /// Its JoinGroup and SyncGroup waiting for an answer.
    pub(super) join_req: Option<ReqId>,
    pub(super) sync_req: Option<ReqId>,
    /// The client runs (an old incarnation of a static member, or a member that left, does
    /// not, though it may still send a stray request).
    pub(super) active: bool,
    /// It was told FENCED_INSTANCE_ID.
    pub(super) fenced: bool,
}

impl Client {
    fn protocols(&self) -> Vec<(String, Bytes)> {
        let key = self.instance_id.as_deref().unwrap_or(&self.name);
        SUBSCRIPTIONS[self.subscription]
            .iter()
            .map(|p| {
                let metadata = format!("{key}:{p}:{}", self.metadata_epoch);
                (p.to_string(), Bytes::from(metadata))
            })
            .collect()
    }

    fn forget_membership(&mut self) {
        self.member_id.clear();
        self.generation = -1;
        self.rejoin = true;
        self.synced = false;
        self.leader = false;
    }
}

impl Driver {
    pub(super) fn add_client(&mut self, instance_id: Option<String>) -> usize {
        let id = self.next_client;
        self.next_client += 1;
        let client = Client {
            name: format!("c{id}"),
            version: if instance_id.is_some() || self.rng.gen_bool(0.6) {
                5
            } else {
                3
            },
            instance_id,
            member_id: String::new(),
            generation: -1,
            rejoin: true,
            synced: false,
            leader: false,
            known_members: Vec::new(),
            protocol: None,
            subscription: if self.rng.gen_bool(0.8) {
                0
            } else {
                self.rng.gen_range(1..4)
            },
            metadata_epoch: 0,
            session_ms: self.rng.gen_range(1_000..=15_000),
            rebalance_ms: self.rng.gen_range(200..=12_000),
            join_req: None,
            sync_req: None,
            active: true,
            fenced: false,
        };
        self.clients.insert(id, client);
        id
    }

    /// Drops clients that no longer run and wait for nothing, beyond the cap.
    fn trim_clients(&mut self) {
        while self.clients.len() >= CLIENTS_MAX {
            let gone = self
                .clients
                .iter()
                .find(|(_, c)| !c.active && c.join_req.is_none() && c.sync_req.is_none());
            match gone.map(|(id, _)| *id) {
                Some(id) => {
                    self.clients.remove(&id);
                }
                None => return,
            }
        }
    }

    fn req_id(&mut self) -> ReqId {
        self.next_req += 1;
        self.next_req
    }

    /// JoinGroup with the client's metadata (now and then with a session timeout out of bounds).
    fn join_op(&mut self, client: usize, member_id: String) -> Op {
        let id = self.req_id();
        let c = &self.clients[&client];
        let mut session_ms = c.session_ms;
        if self.rng.gen_ratio(1, 100) {
            session_ms = if self.rng.gen_bool(0.5) { 500 } else { 90_000 };
        }
        Op::Join(
            client,
            JoinReq {
                id,
                member_id,
                instance_id: c.instance_id.clone(),
                version: c.version,
                session_ms,
                rebalance_ms: c.rebalance_ms,
                protocols: c.protocols(),
            },
        )
    }

    /// SyncGroup; a client that believes it leads assigns to the members it was told of (now
    /// and then leaving one out or naming a stranger).
    fn sync_op(&mut self, client: usize, generation: i32) -> Op {
        let id = self.req_id();
        let c = &self.clients[&client];
        let mut assignments: Vec<(String, Bytes)> = Vec::new();
        if c.leader {
            for (i, m) in c.known_members.iter().enumerate() {
                assignments.push((m.clone(), Bytes::from(format!("g{generation}-p{i}"))));
            }
            if self.rng.gen_ratio(1, 10) && !assignments.is_empty() {
                assignments.pop();
            }
            if self.rng.gen_ratio(1, 20) {
                assignments.push(("stranger".into(), Bytes::from_static(b"x")));
            }
        }
        Op::Sync(
            client,
            SyncReq {
                id,
                member_id: c.member_id.clone(),
                instance_id: c.instance_id.clone(),
                generation,
                protocol: c.protocol.clone(),
                assignments,
            },
        )
    }

    fn heartbeat_op(&self, client: usize, generation: i32) -> Op {
        let c = &self.clients[&client];
        Op::Heartbeat {
            member_id: c.member_id.clone(),
            generation,
            instance_id: c.instance_id.clone(),
            client,
        }
    }

    /// What a running client does next on its own.
    fn natural_op(&mut self, client: usize) -> Option<Op> {
        let c = &self.clients[&client];
        if !c.active || c.fenced {
            return None;
        }
        let waiting = c.join_req.is_some() || c.sync_req.is_some();
        if waiting {
            return (!c.member_id.is_empty() && c.generation >= 0)
                .then(|| self.heartbeat_op(client, c.generation));
        }
        if c.member_id.is_empty() || c.rejoin || c.generation < 0 {
            let member_id = c.member_id.clone();
            return Some(self.join_op(client, member_id));
        }
        if !c.synced {
            let generation = c.generation;
            return Some(self.sync_op(client, generation));
        }
        Some(self.heartbeat_op(client, c.generation))
    }

    fn random_client(&mut self) -> Option<usize> {
        let ids: Vec<usize> = self.clients.keys().copied().collect();
        (!ids.is_empty()).then(|| ids[self.rng.gen_range(0..ids.len())])
    }

    /// A client that has a member id, mostly.
    fn random_member(&mut self) -> Option<usize> {
        let ids: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.member_id.is_empty())
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() || self.rng.gen_ratio(1, 5) {
            return self.random_client();
        }
        Some(ids[self.rng.gen_range(0..ids.len())])
    }

    /// Something a client does that the protocol does not ask for: starting, restarting,
    /// changing its metadata, using a stale generation, leaving, or a stray request of an old
    /// incarnation.
    fn random_op(&mut self) -> Option<Op> {
        let roll = self.rng.gen_range(0..100);
        let active = self.clients.values().filter(|c| c.active).count();
        if roll < 10 || active < 2 {
            return self.start_client();
        }
        if roll < 22 {
            return self.restart_static_member();
        }
        if roll < 32 {
            // A stray request of a client that stopped (an old incarnation, a member that
            // left): as it would send it.
            let stopped: Vec<usize> = self
                .clients
                .iter()
                .filter(|(_, c)| (!c.active || c.fenced) && !c.member_id.is_empty())
                .map(|(id, _)| *id)
                .collect();
            if stopped.is_empty() {
                return None;
            }
            let client = stopped[self.rng.gen_range(0..stopped.len())];
            let c = &self.clients[&client];
            let (member_id, generation) = (c.member_id.clone(), c.generation);
            return Some(match self.rng.gen_range(0..4) {
                0 => self.join_op(client, member_id),
                1 => self.sync_op(client, generation),
                2 => self.heartbeat_op(client, generation),
                _ => Op::Leave {
                    members: vec![(member_id, c.instance_id.clone())],
                    client: None,
                },
            });
        }
        let client = self.random_member()?;
        let c = &self.clients[&client];
        let (member_id, generation) = (c.member_id.clone(), c.generation);
        Some(match roll {
            32..=45 => {
                // Changed metadata: a new subscription or new user data.
                let c = self.clients.get_mut(&client).expect("client");
                if self.rng.gen_bool(0.3) {
                    c.subscription = self.rng.gen_range(0..SUBSCRIPTIONS.len());
                } else {
                    c.metadata_epoch += 1;
                }
                if self.rng.gen_ratio(1, 5) {
                    c.session_ms = self.rng.gen_range(1_000..=15_000);
                    c.rebalance_ms = self.rng.gen_range(200..=12_000);
                }
                self.join_op(client, member_id)
            }
            46..=53 => self.join_op(client, member_id),
            54..=59 => {
                // A dynamic member that lost its id starts over; its old id stays until it
                // times out.
                let c = self.clients.get_mut(&client).expect("client");
                if c.instance_id.is_none() {
                    c.forget_membership();
                }
                self.join_op(client, String::new())
            }
            60..=71 => {
                let generation = generation + self.rng.gen_range(-1..=1);
                self.sync_op(client, generation)
            }
            72..=87 => {
                let generation = generation + self.rng.gen_range(-1..=1);
                self.heartbeat_op(client, generation)
            }
            88..=95 => {
                let instance_id = self.clients[&client].instance_id.clone();
                Op::Leave {
                    members: vec![(member_id, instance_id)],
                    client: Some(client),
                }
            }
            _ => {
                // An administrator removes a static member by its instance id.
                let instance = INSTANCES[self.rng.gen_range(0..INSTANCES.len())].to_string();
                Op::Leave {
                    members: vec![(String::new(), Some(instance))],
                    client: None,
                }
            }
        })
    }

    /// A new client, or one that stopped starting again, joins.
    fn start_client(&mut self) -> Option<Op> {
        let stopped: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| !c.active && !c.fenced && c.join_req.is_none())
            .map(|(id, _)| *id)
            .collect();
        if !stopped.is_empty() && self.rng.gen_bool(0.5) {
            let client = stopped[self.rng.gen_range(0..stopped.len())];
            let c = self.clients.get_mut(&client).expect("client");
            c.active = true;
            let member_id = c.member_id.clone();
            return Some(self.join_op(client, member_id));
        }
        self.trim_clients();
        if self.clients.len() >= CLIENTS_MAX {
            return None;
        }
        let instance = self
            .rng
            .gen_bool(0.4)
            .then(|| INSTANCES[self.rng.gen_range(0..INSTANCES.len())].to_string());
        if instance.as_ref().is_some_and(|i| {
            self.clients
                .values()
                .any(|c| c.active && c.instance_id.as_ref() == Some(i))
        }) {
            return self.restart_static_member();
        }
        let id = self.add_client(instance);
        Some(self.join_op(id, String::new()))
    }

    /// A static member's process starts again (the old one may not be quite dead): the new
    /// incarnation joins with no member id and the same instance id.
    fn restart_static_member(&mut self) -> Option<Op> {
        let running: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.active && c.instance_id.is_some())
            .map(|(id, _)| *id)
            .collect();
        if running.is_empty() {
            return None;
        }
        self.trim_clients();
        if self.clients.len() >= CLIENTS_MAX {
            return None;
        }
        let old = running[self.rng.gen_range(0..running.len())];
        let c = self.clients.get_mut(&old).expect("client");
        c.active = false;
        let (instance, subscription, epoch) =
            (c.instance_id.clone(), c.subscription, c.metadata_epoch);
        let changed = self.rng.gen_ratio(1, 4);
        let id = self.add_client(instance);
        let c = self.clients.get_mut(&id).expect("client");
        c.subscription = subscription;
        c.metadata_epoch = epoch + u32::from(changed);
        Some(self.join_op(id, String::new()))
    }

    /// Time passes: a little, a lot, or up to the group's next deadline (give or take 1 ms).
    fn tick_op(&mut self) -> Op {
        let now = mono_ms();
        let advance_ms = match self.rng.gen_range(0..100) {
            0..=49 => self.rng.gen_range(1..=300),
            50..=69 => self.rng.gen_range(300..=2_000),
            70..=77 => self.rng.gen_range(2_000..=20_000),
            78..=81 => 0,
            _ => match self.candidates[0].next_deadline(now) {
                Some(t) => (t - now + self.rng.gen_range(-1..=1)).max(1),
                None => self.rng.gen_range(1..=2_000),
            },
        };
        Op::Tick { advance_ms }
    }

    /// Mostly what the clients would do next, then time passing, then the unexpected.
    pub(super) fn next_op(&mut self) -> Op {
        loop {
            let roll = self.rng.gen_range(0..100);
            let op = if roll < 65 {
                match self.random_client() {
                    Some(c) => self.natural_op(c),
                    None => None,
                }
            } else if roll < 87 {
                Some(self.tick_op())
            } else {
                self.random_op()
            };
            if let Some(op) = op {
                return op;
            }
        }
    }

    /// The clients learn from their answers (and the step is counted).
    pub(super) fn learn(
        &mut self,
        op: &Op,
        answers: &BTreeMap<ReqId, Answer>,
        codes: &Option<Vec<i16>>,
        observed: &Observed,
    ) {
        if let Some(state) = observed.state {
            self.stats.states[state as usize] += 1;
        }
        if matches!(op, Op::Tick { .. }) {
            let gone = self
                .last_members
                .iter()
                .filter(|id| !observed.members.contains_key(*id));
            self.stats.members_gone_in_ticks += gone.count() as u64;
        }
        self.last_members = observed.members.keys().cloned().collect();
        for code in codes.iter().flatten() {
            *self.stats.codes.entry(*code).or_default() += 1;
        }
        for (id, answer) in answers {
            let client = self
                .clients
                .iter()
                .find(|(_, c)| c.join_req == Some(*id) || c.sync_req == Some(*id))
                .map(|(k, _)| *k);
            let code = match answer {
                Answer::Join(a) => a.error,
                Answer::Sync(a) => a.error,
            };
            *self.stats.codes.entry(code).or_default() += 1;
            let Some(c) = client.and_then(|k| self.clients.get_mut(&k)) else {
                continue;
            };
            match answer {
                Answer::Join(a) => {
                    c.join_req = None;
                    match E::try_from_code(a.error) {
                        None => {
                            c.member_id = a.member_id.clone();
                            c.generation = a.generation;
                            c.leader = a.leader == a.member_id;
                            c.known_members = a.members.iter().map(|m| m.0.clone()).collect();
                            c.protocol = a.protocol.clone();
                            c.rejoin = false;
                            c.synced = false;
                        }
                        Some(E::MemberIdRequired) => {
                            c.member_id = a.member_id.clone();
                            c.rejoin = true;
                        }
                        Some(E::UnknownMemberId) => c.forget_membership(),
                        Some(E::FencedInstanceId) => c.fenced = true,
                        Some(E::InconsistentGroupProtocol) => {
                            c.subscription = 0;
                            c.rejoin = true;
                        }
                        Some(_) => c.rejoin = true,
                    }
                }
                Answer::Sync(a) => {
                    c.sync_req = None;
                    match E::try_from_code(a.error) {
                        None => c.synced = true,
                        Some(E::UnknownMemberId) => c.forget_membership(),
                        Some(E::FencedInstanceId) => c.fenced = true,
                        Some(_) => c.rejoin = true,
                    }
                }
            }
        }
        match op {
            Op::Heartbeat { client, .. } => {
                let code = codes.as_ref().expect("a code")[0];
                if let Some(c) = self.clients.get_mut(client) {
                    match E::try_from_code(code) {
                        None => {}
                        Some(E::UnknownMemberId) => c.forget_membership(),
                        Some(E::FencedInstanceId) => c.fenced = true,
                        Some(_) => c.rejoin = true,
                    }
                }
            }
            Op::Leave {
                client: Some(client),
                ..
            } => {
                if let Some(c) = self.clients.get_mut(client) {
                    c.forget_membership();
                    c.active = false;
                }
            }
            _ => {}
        }
    }
}
