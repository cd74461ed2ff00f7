//! AlterConfigs (key 33): replaces a topic's whole set of overrides.

use bytes::Bytes;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{AlterConfigsRequest, AlterConfigsResponse};
use kafka_protocol::ResponseError as E;

use super::describe_configs::RESOURCE_TOPIC;
use super::{str_bytes, Ctx, HandlerResult};
use crate::metadata::controller::{ConfigOpKind, ControllerError, ControllerOp};

/// Shared by AlterConfigs and IncrementalAlterConfigs: one resource's outcome.
pub async fn alter_resource(
    ctx: &Ctx<'_>,
    resource_type: i8,
    name: &str,
    ops: Vec<(String, ConfigOpKind, Option<String>)>,
    replace: bool,
    validate_only: bool,
) -> Result<(), ControllerError> {
    if resource_type != RESOURCE_TOPIC {
        return Err(ControllerError {
            code: E::InvalidRequest.code(),
            message: "only topic configs can be altered; broker settings are static".into(),
        });
    }
    ctx.controller(ControllerOp::AlterConfigs {
        name: name.to_string(),
        ops,
        replace,
        validate_only,
    })
    .await
}

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: AlterConfigsRequest = ctx.decode(body)?;
    let mut resp = AlterConfigsResponse::default();
    for res in req.resources {
        let ops = res
            .configs
            .iter()
            .map(|c| {
                (
                    c.name.to_string(),
                    ConfigOpKind::Set,
                    c.value.as_ref().map(|v| v.to_string()),
                )
            })
            .collect();
        let mut r = AlterConfigsResourceResponse::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        if let Err(e) = alter_resource(
            ctx,
            res.resource_type,
            res.resource_name.as_str(),
            ops,
            true,
            req.validate_only,
        )
        .await
        {
            r.error_code = e.code;
            ctx.note_error(r.error_code);
            r.error_message = Some(str_bytes(&e.message));
        }
        resp.responses.push(r);
    }
    Ok(ctx.respond(&resp))
}
