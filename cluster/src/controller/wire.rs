//! Messages between the controller nodes, and their frames on a peer connection.
//!
//! ```text
//! frame := length:u32be  body            (length = body bytes, at most PEER_FRAME_BYTES_MAX;
//!                                        Kafka's framing, so the same frame reader serves both)
//! body  := rkyv archive of PeerMessage
//! ```
//!
//! Each node opens one connection to every other voter and sends on it only; it receives on the
//! connections its peers opened. The first message on a connection is `Hello`.

use super::image::{Applied, Command};

/// The largest frame a node accepts from a peer: a Raft append carries at most 1 MiB of entries
/// (`max_size_per_msg`), and a snapshot the whole image; a peer sending more is dropped.
pub const PEER_FRAME_BYTES_MAX: usize = 64 * 1024 * 1024;

/// A proposal a node forwards to the active controller.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    /// Chosen by the forwarding node; the reply carries it back.
    pub request_id: u64,
    /// The command to propose.
    pub command: Command,
}

/// The answer to a [`Forward`].
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ForwardReply {
    /// The forwarded request's id.
    pub request_id: u64,
    /// What became of it.
    pub outcome: ProposalOutcome,
}

/// A broker's liveness signal to the active controller.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Heartbeat {
    /// The broker.
    pub node_id: i32,
    /// Its incarnation (from its registration).
    pub incarnation: u64,
    /// The broker is stopping (SIGTERM): it asks to be fenced now, so that its partitions get
    /// new leaders before it goes (Kafka's controlled shutdown, `WantShutDown`).
    pub shutting_down: bool,
}

/// The first message on a connection: who is sending, and which start of that node.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's node id.
    pub node_id: i32,
    /// Random per start of the sender's process: a new value means the peer restarted, so a
    /// connection to it opened before is stale.
    pub session: u64,
}

/// What became of a proposal.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum ProposalOutcome {
    /// Committed and applied, with this result.
    Applied(Applied),
    /// The node asked is not the active controller; the leader it knows, or -1.
    NotLeader(i32),
    /// Not committed in time (leadership moved, or no quorum); it may still commit later, so
    /// commands are written to be harmless when repeated.
    TimedOut,
}

/// One message between controller nodes.
#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum PeerMessage {
    /// First on every connection.
    Hello(Hello),
    /// An encoded Raft message.
    Raft(Vec<u8>),
    /// A proposal for the active controller.
    Forward(Forward),
    /// The answer to a forwarded proposal.
    ForwardReply(ForwardReply),
    /// A broker heartbeat.
    Heartbeat(Heartbeat),
}

impl PeerMessage {
    /// The message as a frame (length prefix included).
    pub fn to_frame(&self) -> Vec<u8> {
        let body = rkyv::to_bytes::<rkyv::rancor::Error>(self)
            .map(|b| b.to_vec())
            .unwrap_or_default();
        let mut frame = Vec::with_capacity(4 + body.len());
        frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_be_bytes());
        frame.extend_from_slice(&body);
        frame
    }

    /// A message from a frame's body.
    pub fn from_body(body: &[u8]) -> Result<PeerMessage, super::image::CodecError> {
        super::image::decode_archived(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::image::IdBlock;

    #[test]
    fn messages_round_trip_through_frames() {
        let messages = vec![
            PeerMessage::Hello(Hello {
                node_id: 3,
                session: 12,
            }),
            PeerMessage::Raft(vec![1, 2, 3]),
            PeerMessage::Forward(Forward {
                request_id: 9,
                command: Command::DeleteTopic("t".into()),
            }),
            PeerMessage::ForwardReply(ForwardReply {
                request_id: 9,
                outcome: ProposalOutcome::Applied(Applied::ProducerIds(IdBlock {
                    start: 1000,
                    count: 1000,
                })),
            }),
            PeerMessage::ForwardReply(ForwardReply {
                request_id: 10,
                outcome: ProposalOutcome::NotLeader(2),
            }),
            PeerMessage::Heartbeat(Heartbeat {
                node_id: 1,
                incarnation: 77,
                shutting_down: true,
            }),
        ];
        for m in messages {
            let frame = m.to_frame();
            let len = u32::from_be_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(len, frame.len() - 4);
            assert_eq!(PeerMessage::from_body(&frame[4..]).unwrap(), m);
        }
        assert!(PeerMessage::from_body(b"\x01\x02garbage").is_err());
    }
}
