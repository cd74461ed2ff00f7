//! ListGroups, DescribeGroups and DeleteGroups.

use std::rc::Rc;

use bytes::Bytes;
use kafka_protocol::ResponseError as E;

use super::{DescribedGroup, DescribedMember, GroupCoordinator, ListedGroup};
use crate::group::state::{GroupState, Member};
use crate::group::store::{self, LogRecord};

impl GroupCoordinator {
    /// ListGroups: the groups whose state is one of `states` and whose type is one of `types`
    /// (an empty filter lets all through; every group here is `classic`).
    pub fn list(&self, states: &[String], types: &[String]) -> Vec<ListedGroup> {
        let groups = self.groups.borrow();
        let mut out: Vec<ListedGroup> = groups
            .values()
            .filter(|g| !g.is(GroupState::Dead))
            .filter(|g| {
                states.is_empty()
                    || states
                        .iter()
                        .any(|s| s.eq_ignore_ascii_case(g.state.name()))
            })
            .filter(|_| types.is_empty() || types.iter().any(|t| t.eq_ignore_ascii_case("classic")))
            .map(|g| ListedGroup {
                group_id: g.id.clone(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                state: g.state.name(),
            })
            .collect();
        out.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        out
    }

    /// DescribeGroups of one group (Dead if there is no such group).
    pub fn describe(&self, group_id: &str) -> DescribedGroup {
        let groups = self.groups.borrow();
        let Some(g) = groups.get(group_id) else {
            return DescribedGroup {
                group_id: group_id.to_string(),
                state: GroupState::Dead.name(),
                ..Default::default()
            };
        };
        let stable = g.is(GroupState::Stable);
        let protocol = if stable {
            g.protocol.clone().unwrap_or_default()
        } else {
            String::new()
        };
        let mut members: Vec<&Member> = g.members.values().collect();
        members.sort_by_key(|m| m.order);
        DescribedGroup {
            error: 0,
            group_id: g.id.clone(),
            state: g.state.name(),
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: protocol.clone(),
            members: members
                .into_iter()
                .map(|m| DescribedMember {
                    member_id: m.id.clone(),
                    instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: if stable {
                        m.metadata_for(&protocol)
                    } else {
                        Bytes::new()
                    },
                    assignment: if stable {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        }
    }

    /// DeleteGroups of one group: only an empty group; its offsets and metadata are removed
    /// from the offsets log.
    pub async fn delete_group(self: &Rc<Self>, group_id: &str) -> i16 {
        let records = {
            let mut groups = self.groups.borrow_mut();
            let Some(group) = groups.get(group_id) else {
                return E::GroupIdNotFound.code();
            };
            match group.state {
                GroupState::Dead => return E::GroupIdNotFound.code(),
                GroupState::Empty => {}
                _ => return E::NonEmptyGroup.code(),
            }
            let group = groups.remove(group_id).expect("present");
            let mut records: Vec<LogRecord> = group
                .offsets
                .keys()
                .map(|(topic, p)| LogRecord::Offset {
                    group: group_id.to_string(),
                    topic: topic.clone(),
                    partition: *p,
                    value: None,
                })
                .collect();
            records.push(LogRecord::Group {
                group: group_id.to_string(),
                value: None,
            });
            records
        };
        tracing::info!(group = %group_id, "group deleted");
        let rx = self.store.submit(self, records);
        match store::outcome(rx).await {
            Ok(()) => 0,
            Err(e) => {
                tracing::error!(group = %group_id, "deleting group: {e}");
                e.code()
            }
        }
    }
}
