//! DescribeCluster (key 60).

use bytes::Bytes;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{str_bytes, Ctx, HandlerResult};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: DescribeClusterRequest = ctx.decode(body)?;
    let c = &ctx.shard.config;
    let mut resp = DescribeClusterResponse::default();
    resp.cluster_id = str_bytes(&c.cluster_id);
    resp.controller_id = BrokerId(super::metadata::controller_id(ctx));
    resp.brokers = super::metadata::brokers(ctx)
        .iter()
        .map(|e| {
            let mut b = DescribeClusterBroker::default();
            b.broker_id = BrokerId(e.node_id);
            b.host = str_bytes(&e.host);
            b.port = i32::from(e.port);
            b.rack = e.rack.as_deref().map(str_bytes);
            b
        })
        .collect();
    resp.cluster_authorized_operations = if req.include_cluster_authorized_operations {
        super::metadata::CLUSTER_OPERATIONS_ALL
    } else {
        i32::MIN
    };
    resp.endpoint_type = 1;
    Ok(ctx.respond(&resp))
}
