//! The values the model test compares: requests, answers (JoinGroup, SyncGroup), and the view
//! of a group that the model and the coordinator must agree on after every step.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use kafka_protocol::ResponseError as E;

use crate::group::state::JoinResult;

/// A request id of the driver.
pub type ReqId = u64;

/// The protocol names clients offer, in the one order every client lists them in: each member
/// then votes for the first name all members support, so the selection never ties.
pub const PROTOCOL_ORDER: [&str; 3] = ["range", "roundrobin", "sticky"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

/// A JoinGroup answer, as compared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinAnswer {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// (member id, instance id, metadata), for the leader.
    pub members: Vec<(String, Option<String>, Bytes)>,
    pub skip_assignment: bool,
}

impl JoinAnswer {
    pub fn error(code: E, member_id: &str) -> JoinAnswer {
        JoinAnswer {
            error: code.code(),
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

impl From<JoinResult> for JoinAnswer {
    fn from(r: JoinResult) -> JoinAnswer {
        JoinAnswer {
            error: r.error,
            generation: r.generation,
            protocol_type: r.protocol_type,
            protocol: r.protocol,
            leader: r.leader,
            member_id: r.member_id,
            members: r
                .members
                .into_iter()
                .map(|m| (m.member_id, m.instance_id, m.metadata))
                .collect(),
            skip_assignment: r.skip_assignment,
        }
    }
}

/// A SyncGroup answer, as compared: the coordinator's own result type.
pub use crate::group::state::SyncResult as SyncAnswer;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Join(JoinAnswer),
    Sync(SyncAnswer),
}

/// A JoinGroup request.
#[derive(Clone, Debug)]
pub struct JoinReq {
    pub id: ReqId,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub version: i16,
    pub session_ms: i32,
    pub rebalance_ms: i32,
    pub protocols: Vec<(String, Bytes)>,
}

/// A SyncGroup request.
#[derive(Clone, Debug)]
pub struct SyncReq {
    pub id: ReqId,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub generation: i32,
    pub protocol: Option<String>,
    pub assignments: Vec<(String, Bytes)>,
}

/// What the model compares with the coordinator's group after every step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub exists: bool,
    pub state: Option<State>,
    pub generation: i32,
    pub leader: Option<String>,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub members: BTreeMap<String, ObservedMember>,
    pub pending: BTreeSet<String>,
    /// group.instance.id -> member id.
    pub instances: BTreeMap<String, String>,
}

impl Observed {
    /// A group the coordinator does not have.
    pub fn absent() -> Observed {
        Observed {
            exists: false,
            state: None,
            generation: 0,
            leader: None,
            protocol_type: None,
            protocol: None,
            members: BTreeMap::new(),
            pending: BTreeSet::new(),
            instances: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedMember {
    pub instance_id: Option<String>,
    pub protocols: Vec<(String, Bytes)>,
    pub awaiting_join: bool,
    pub awaiting_sync: bool,
    pub assignment: Bytes,
}

/// The group settings the model needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub initial_delay_ms: i64,
    pub session_ms_min: i32,
    pub session_ms_max: i32,
    pub members_max: usize,
}
