//! The one table of supported APIs and versions. ApiVersions advertises exactly this table and
//! `docs/kafka_compat.md` lists the same ranges (a test keeps them equal).
//!
//! `advertised_min` may be lower than `decode_min`: librdkafka enables features only when the
//! advertised range overlaps fixed ranges (for example it needs Produce to advertise min 0, or it
//! silently stops compressing), while the versions it really sends are all >= `decode_min`.

use kafka_protocol::messages::ApiKey;

#[derive(Clone, Copy, Debug)]
pub struct ApiSupport {
    pub key: ApiKey,
    pub advertised_min: i16,
    pub decode_min: i16,
    pub max: i16,
}

const fn api(key: ApiKey, advertised_min: i16, decode_min: i16, max: i16) -> ApiSupport {
    ApiSupport {
        key,
        advertised_min,
        decode_min,
        max,
    }
}

pub const SUPPORTED_APIS: &[ApiSupport] = &[
    // v10 adds the leader hints of KIP-951 to NOT_LEADER_OR_FOLLOWER answers.
    api(ApiKey::Produce, 0, 3, 10),
    api(ApiKey::Fetch, 4, 4, 12),
    api(ApiKey::ListOffsets, 1, 1, 7),
    // Where a leader epoch ends (KIP-101); Kafka 4 keeps v2+ (the current-epoch fencing of
    // KIP-320).
    api(ApiKey::OffsetForLeaderEpoch, 2, 2, 4),
    api(ApiKey::Metadata, 0, 0, 12),
    api(ApiKey::FindCoordinator, 0, 0, 4),
    api(ApiKey::ApiVersions, 0, 0, 3),
    api(ApiKey::CreateTopics, 2, 2, 7),
    api(ApiKey::DeleteTopics, 1, 1, 6),
    api(ApiKey::DescribeConfigs, 1, 1, 4),
    api(ApiKey::AlterConfigs, 0, 0, 2),
    api(ApiKey::CreatePartitions, 0, 0, 3),
    api(ApiKey::IncrementalAlterConfigs, 0, 0, 1),
    api(ApiKey::DescribeCluster, 0, 0, 1),
    // Idempotent producers. librdkafka enables idempotence only if InitProducerId 0 is in the
    // range; kafkajs and aiokafka send v0/v1.
    api(ApiKey::InitProducerId, 0, 0, 5),
    // Consumer groups. librdkafka enables them only if the ranges overlap the versions it
    // checks for (OffsetCommit 1..2, OffsetFetch 1, the others 0), so the minimum advertised is
    // 0 even where the oldest versions are not decoded.
    api(ApiKey::JoinGroup, 0, 0, 9),
    api(ApiKey::SyncGroup, 0, 0, 5),
    api(ApiKey::Heartbeat, 0, 0, 4),
    api(ApiKey::LeaveGroup, 0, 0, 5),
    api(ApiKey::OffsetCommit, 0, 2, 8),
    api(ApiKey::OffsetFetch, 0, 1, 8),
    api(ApiKey::ListGroups, 0, 0, 5),
    api(ApiKey::DescribeGroups, 0, 0, 5),
    api(ApiKey::DeleteGroups, 0, 0, 2),
    api(ApiKey::OffsetDelete, 0, 0, 0),
    api(ApiKey::DeleteRecords, 0, 0, 2),
    // v0 is decoded and encoded as v1 (`WIRE_ALIASES`).
    api(ApiKey::DescribeLogDirs, 0, 0, 4),
];

/// Versions that are byte for byte equal to a newer one, which the protocol crate no longer
/// generates: (API, version, the equal version it is decoded and encoded as). DescribeLogDirs v0
/// was dropped in Kafka 4.0 (KIP-896); its schema says "Version 1 is the same as version 0", in
/// the request and the response.
pub const WIRE_ALIASES: &[(ApiKey, i16, i16)] = &[(ApiKey::DescribeLogDirs, 0, 1)];

/// The version whose layout a request of `version` has (itself unless aliased).
pub fn wire_version(key: ApiKey, version: i16) -> i16 {
    WIRE_ALIASES
        .iter()
        .find(|(k, v, _)| *k == key && *v == version)
        .map_or(version, |a| a.2)
}

pub fn support(key: ApiKey) -> Option<&'static ApiSupport> {
    SUPPORTED_APIS.iter().find(|a| a.key == key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Message;

    /// Every advertised version can be decoded by the protocol crate.
    #[test]
    fn table_is_within_the_protocol_crate() {
        for a in SUPPORTED_APIS {
            let v = a.key.valid_versions();
            let min = wire_version(a.key, a.decode_min);
            assert!(
                min >= v.min && a.max <= v.max,
                "{:?}: {}..{} outside {}",
                a.key,
                a.decode_min,
                a.max,
                v
            );
            assert!(a.advertised_min <= a.decode_min);
        }
        let _ = kafka_protocol::messages::ProduceRequest::VERSIONS;
    }

    /// Each alias maps a supported version onto the next one, which the protocol crate knows.
    #[test]
    fn wire_aliases_are_supported_versions() {
        for &(key, version, wire) in WIRE_ALIASES {
            let a = support(key).expect("aliased API is in the table");
            assert!(
                a.decode_min <= version && version < wire && wire <= a.max,
                "{key:?} v{version} -> v{wire}"
            );
            assert!(wire >= key.valid_versions().min);
            assert_eq!(wire_version(key, version), wire);
            assert_eq!(wire_version(key, wire), wire);
        }
    }

    /// docs/kafka_compat.md lists exactly this table, as `| Name | key | min..max |` rows.
    #[test]
    fn compat_doc_matches_table() {
        let doc = include_str!("../../../docs/kafka_compat.md");
        for a in SUPPORTED_APIS {
            let row = format!(
                "| {:?} | {} | {}..{} |",
                a.key, a.key as i16, a.advertised_min, a.max
            );
            assert!(
                doc.contains(&row),
                "docs/kafka_compat.md lacks the row `{row}`"
            );
        }
        let rows = doc
            .lines()
            .filter(|l| l.starts_with("| ") && l.contains("..") && l.matches('|').count() >= 4)
            .count();
        assert!(rows >= SUPPORTED_APIS.len());
    }
}
