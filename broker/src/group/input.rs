//! Checks of what a client hands the group coordinator, made where a request enters: before it
//! is forwarded to the group's shard, looked up or stored. The bounds and the reasons for them
//! are in `limits.rs`; the offsets-log encoder checks its length fields again (`store.rs`).

use bytes::Bytes;
use kafka_protocol::ResponseError as E;

use crate::limits::{
    GROUP_ID_BYTES_MAX, GROUP_INSTANCE_ID_BYTES_MAX, JOIN_PROTOCOLS_BYTES_MAX, JOIN_PROTOCOLS_MAX,
    MEMBER_ID_BYTES_MAX, MEMBER_ID_PREFIX_BYTES_MAX, MEMBER_ID_UUID_BYTES,
    SYNC_ASSIGNMENT_BYTES_MAX,
};

/// Why a group id is refused, if it is. OffsetCommit, OffsetFetch, DescribeGroups and
/// DeleteGroups accept the empty id (as Kafka does, for old clients); no API accepts an id the
/// offsets log could not store.
pub fn group_id_error(group_id: &str, empty_allowed: bool) -> Option<E> {
    let refused = group_id.len() > GROUP_ID_BYTES_MAX || (group_id.is_empty() && !empty_allowed);
    refused.then_some(E::InvalidGroupId)
}

/// A member id longer than any Strom generates names no member (UNKNOWN_MEMBER_ID).
pub fn member_id_is_unknown(member_id: &str) -> bool {
    member_id.len() > MEMBER_ID_BYTES_MAX
}

/// Why a JoinGroup's instance id or protocols are refused, if they are.
pub fn join_error(
    instance_id: Option<&str>,
    protocol_type: &str,
    protocols: &[(String, Bytes)],
) -> Option<E> {
    if instance_id.is_some_and(|i| i.len() > GROUP_INSTANCE_ID_BYTES_MAX)
        || protocols.len() > JOIN_PROTOCOLS_MAX
    {
        return Some(E::InvalidRequest);
    }
    let bytes = protocols
        .iter()
        .fold(protocol_type.len(), |sum, (name, metadata)| {
            sum + name.len() + metadata.len()
        });
    (bytes > JOIN_PROTOCOLS_BYTES_MAX).then_some(E::InvalidRequest)
}

/// Why a SyncGroup's assignments are refused, if they are.
pub fn sync_error(assignments: &[(String, Bytes)]) -> Option<E> {
    assignments
        .iter()
        .any(|(_, a)| a.len() > SYNC_ASSIGNMENT_BYTES_MAX)
        .then_some(E::InvalidRequest)
}

/// A new member id, as Kafka makes them: `prefix-UUID`, the prefix (client id or instance id) cut
/// to `MEMBER_ID_PREFIX_BYTES_MAX` bytes at a character boundary.
pub fn new_member_id(prefix: &str) -> String {
    let mut end = prefix.len().min(MEMBER_ID_PREFIX_BYTES_MAX);
    while !prefix.is_char_boundary(end) {
        end -= 1;
    }
    let id = uuid::Uuid::from_bytes(rand::random());
    let out = format!("{}-{}", &prefix[..end], id.hyphenated());
    debug_assert!(out.len() <= MEMBER_ID_BYTES_MAX && out.len() > MEMBER_ID_UUID_BYTES);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_ids_are_bounded_by_what_the_log_can_store() {
        let at_limit = "g".repeat(GROUP_ID_BYTES_MAX);
        assert_eq!(group_id_error(&at_limit, false), None);
        assert_eq!(
            group_id_error(&format!("{at_limit}g"), true),
            Some(E::InvalidGroupId)
        );
        assert_eq!(group_id_error("", true), None);
        assert_eq!(group_id_error("", false), Some(E::InvalidGroupId));
    }

    #[test]
    fn generated_member_ids_stay_within_the_bound() {
        for prefix in [
            "",
            "client",
            &"c".repeat(40_000),
            &"é".repeat(MEMBER_ID_PREFIX_BYTES_MAX),
        ] {
            let id = new_member_id(prefix);
            assert!(id.len() <= MEMBER_ID_BYTES_MAX, "{} bytes", id.len());
            assert!(!member_id_is_unknown(&id));
            let kept = &id[..id.len() - MEMBER_ID_UUID_BYTES - 1];
            assert!(prefix.starts_with(kept));
        }
        assert_eq!(
            new_member_id(&"i".repeat(GROUP_INSTANCE_ID_BYTES_MAX)).len(),
            MEMBER_ID_BYTES_MAX
        );
        assert!(member_id_is_unknown(&"m".repeat(MEMBER_ID_BYTES_MAX + 1)));
    }

    #[test]
    fn join_and_sync_payloads_are_bounded() {
        let one = |n: usize| vec![("range".to_string(), Bytes::from(vec![0u8; n]))];
        assert_eq!(
            join_error(
                Some(&"i".repeat(GROUP_INSTANCE_ID_BYTES_MAX)),
                "consumer",
                &one(10)
            ),
            None
        );
        assert_eq!(
            join_error(
                Some(&"i".repeat(GROUP_INSTANCE_ID_BYTES_MAX + 1)),
                "consumer",
                &one(10)
            ),
            Some(E::InvalidRequest)
        );
        let fits = JOIN_PROTOCOLS_BYTES_MAX - "consumer".len() - "range".len();
        assert_eq!(join_error(None, "consumer", &one(fits)), None);
        assert_eq!(
            join_error(None, "consumer", &one(fits + 1)),
            Some(E::InvalidRequest)
        );
        let many: Vec<(String, Bytes)> = (0..=JOIN_PROTOCOLS_MAX)
            .map(|i| (format!("p{i}"), Bytes::new()))
            .collect();
        assert_eq!(
            join_error(None, "consumer", &many[..JOIN_PROTOCOLS_MAX]),
            None
        );
        assert_eq!(join_error(None, "consumer", &many), Some(E::InvalidRequest));
        let assignment = |n: usize| vec![("m".to_string(), Bytes::from(vec![0u8; n]))];
        assert_eq!(sync_error(&assignment(SYNC_ASSIGNMENT_BYTES_MAX)), None);
        assert_eq!(
            sync_error(&assignment(SYNC_ASSIGNMENT_BYTES_MAX + 1)),
            Some(E::InvalidRequest)
        );
    }
}
