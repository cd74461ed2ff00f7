//! IncrementalAlterConfigs (key 44): SET / DELETE / APPEND / SUBTRACT on single topic configs.

use bytes::Bytes;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
use kafka_protocol::messages::{IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse};
use kafka_protocol::ResponseError as E;

use super::alter_configs::alter_resource;
use super::{str_bytes, Ctx, HandlerResult};
use crate::metadata::controller::ConfigOpKind;

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: IncrementalAlterConfigsRequest = ctx.decode(body)?;
    let mut resp = IncrementalAlterConfigsResponse::default();
    for res in req.resources {
        let mut r = AlterConfigsResourceResponse::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let mut ops = Vec::new();
        let mut bad = None;
        for c in &res.configs {
            let kind = match c.config_operation {
                0 => ConfigOpKind::Set,
                1 => ConfigOpKind::Delete,
                2 => ConfigOpKind::Append,
                3 => ConfigOpKind::Subtract,
                other => {
                    bad = Some(format!("unknown config operation {other}"));
                    break;
                }
            };
            ops.push((
                c.name.to_string(),
                kind,
                c.value.as_ref().map(|v| v.to_string()),
            ));
        }
        let result = match bad {
            Some(msg) => Err((E::InvalidRequest.code(), msg)),
            None => alter_resource(
                ctx,
                res.resource_type,
                res.resource_name.as_str(),
                ops,
                false,
                req.validate_only,
            )
            .await
            .map_err(|e| (e.code, e.message)),
        };
        if let Err((code, msg)) = result {
            r.error_code = code;
            ctx.note_error(r.error_code);
            r.error_message = Some(str_bytes(&msg));
        }
        resp.responses.push(r);
    }
    Ok(ctx.respond(&resp))
}
