//! DescribeConfigs (key 32): topic configs (effective values and which are overridden) and the
//! broker's static configuration.

use bytes::Bytes;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult, DescribeConfigsSynonym,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use kafka_protocol::ResponseError as E;

use super::create_topics::{SOURCE_DEFAULT, SOURCE_TOPIC};
use super::{str_bytes, Ctx, HandlerResult};

pub const RESOURCE_TOPIC: i8 = 2;
pub const RESOURCE_BROKER: i8 = 4;
const SOURCE_STATIC_BROKER: i8 = 4;

fn entry(
    name: &str,
    value: &str,
    source: i8,
    read_only: bool,
    synonyms: bool,
) -> DescribeConfigsResourceResult {
    let mut c = DescribeConfigsResourceResult::default();
    c.name = str_bytes(name);
    c.value = Some(str_bytes(value));
    c.config_source = source;
    c.read_only = read_only;
    if synonyms {
        let mut s = DescribeConfigsSynonym::default();
        s.name = str_bytes(name);
        s.value = Some(str_bytes(value));
        s.source = source;
        c.synonyms = vec![s];
    }
    c
}

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: DescribeConfigsRequest = ctx.decode(body)?;
    let meta = ctx.shard.meta();
    let config = &ctx.shard.config;
    let mut resp = DescribeConfigsResponse::default();
    for res in req.resources {
        let mut r = DescribeConfigsResult::default();
        r.resource_type = res.resource_type;
        r.resource_name = res.resource_name.clone();
        let keys: Option<Vec<String>> = res
            .configuration_keys
            .map(|ks| ks.iter().map(|k| k.to_string()).collect());
        let wanted = |k: &str| keys.as_ref().is_none_or(|ks| ks.iter().any(|w| w == k));
        match res.resource_type {
            RESOURCE_TOPIC => match meta.topic(res.resource_name.as_str()) {
                Some(t) => {
                    r.configs = config
                        .topic_defaults
                        .describe(&t.overrides)
                        .filter(|(k, _, _)| wanted(k))
                        .map(|(k, v, o)| {
                            entry(
                                k,
                                &v,
                                if o { SOURCE_TOPIC } else { SOURCE_DEFAULT },
                                false,
                                req.include_synonyms,
                            )
                        })
                        .collect();
                }
                None => {
                    r.error_code = E::UnknownTopicOrPartition.code();
                    ctx.note_error(r.error_code);
                    r.error_message = Some(str_bytes("This server does not host this topic"));
                }
            },
            RESOURCE_BROKER => {
                let name = res.resource_name.as_str();
                if !name.is_empty() && name != config.node_id.to_string() {
                    r.error_code = E::InvalidRequest.code();
                    ctx.note_error(r.error_code);
                    r.error_message = Some(str_bytes(&format!("unknown broker {name}")));
                } else {
                    r.configs = config
                        .raw
                        .iter()
                        .filter(|(k, _)| wanted(k))
                        .map(|(k, v)| entry(k, v, SOURCE_STATIC_BROKER, true, req.include_synonyms))
                        .collect();
                }
            }
            other => {
                r.error_code = E::InvalidRequest.code();
                ctx.note_error(r.error_code);
                r.error_message = Some(str_bytes(&format!(
                    "resource type {other} is not supported"
                )));
            }
        }
        resp.results.push(r);
    }
    Ok(ctx.respond(&resp))
}
