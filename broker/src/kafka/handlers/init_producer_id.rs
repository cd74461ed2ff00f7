//! InitProducerId (key 22): producer ids for idempotent producers, from the controller.
//!
//! A request without a transactional id gets a new id with epoch 0. From v3 a producer that
//! already has an id may send it with its current epoch to get the next epoch (KIP-360); a stale
//! epoch is PRODUCER_FENCED (v4+) or INVALID_PRODUCER_EPOCH (older versions), and an id the
//! controller does not know (any more) is answered with a new id. Transactional ids get
//! COORDINATOR_NOT_AVAILABLE: there is no transaction coordinator (FindCoordinator answers key
//! type 1 the same way).

use bytes::Bytes;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::ResponseError as E;

use super::{Ctx, HandlerResult};
use crate::ids;
use crate::metadata::controller::{ControllerOp, ControllerOutput};

/// Kafka's "no producer id" / "no epoch" values.
const NO_PRODUCER_ID: i64 = -1;
const NO_PRODUCER_EPOCH: i16 = -1;

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: InitProducerIdRequest = ctx.decode(body)?;
    let result = match &req.transactional_id {
        Some(t) if t.is_empty() => Err(E::InvalidRequest.code()),
        Some(_) => Err(E::CoordinatorNotAvailable.code()),
        None => match current_id(ctx.version, &req) {
            Err(code) => Err(code),
            Ok(current) => match ctx
                .controller_output(ControllerOp::InitProducerId { current })
                .await
            {
                Ok(ControllerOutput::ProducerId { id, epoch }) => Ok((id, epoch)),
                Ok(ControllerOutput::Done) => Err(E::UnknownServerError.code()),
                Err(e) if e.code == E::ProducerFenced.code() && ctx.version < 4 => {
                    Err(E::InvalidProducerEpoch.code())
                }
                Err(e) => Err(e.code),
            },
        },
    };
    let mut resp = InitProducerIdResponse::default();
    match result {
        Ok((id, epoch)) => {
            resp.producer_id = ProducerId(id.0);
            resp.producer_epoch = epoch;
        }
        Err(code) => {
            resp.error_code = code;
            ctx.note_error(resp.error_code);
            resp.producer_id = ProducerId(NO_PRODUCER_ID);
            resp.producer_epoch = NO_PRODUCER_EPOCH;
        }
    }
    Ok(ctx.respond(&resp))
}

/// The id and epoch a producer sends to bump its epoch (v3+), or `None` for a new producer.
/// Exactly one of the two being "none" is INVALID_REQUEST, as in Kafka.
fn current_id(
    version: i16,
    req: &InitProducerIdRequest,
) -> Result<Option<(ids::ProducerId, i16)>, i16> {
    if version < 3 {
        return Ok(None);
    }
    match (req.producer_id.0, req.producer_epoch) {
        (NO_PRODUCER_ID, NO_PRODUCER_EPOCH) => Ok(None),
        (id, epoch) if id < 0 || epoch < 0 => Err(E::InvalidRequest.code()),
        (id, epoch) => Ok(Some((ids::ProducerId(id), epoch))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(id: i64, epoch: i16) -> InitProducerIdRequest {
        let mut r = InitProducerIdRequest::default();
        r.producer_id = ProducerId(id);
        r.producer_epoch = epoch;
        r
    }

    #[test]
    fn current_id_is_read_from_v3() {
        assert_eq!(current_id(2, &req(5, 1)), Ok(None));
        assert_eq!(current_id(3, &req(-1, -1)), Ok(None));
        assert_eq!(current_id(3, &req(5, 1)), Ok(Some((ids::ProducerId(5), 1))));
        assert_eq!(current_id(5, &req(0, 0)), Ok(Some((ids::ProducerId(0), 0))));
        assert_eq!(current_id(4, &req(5, -1)), Err(E::InvalidRequest.code()));
        assert_eq!(current_id(4, &req(-1, 3)), Err(E::InvalidRequest.code()));
    }
}
