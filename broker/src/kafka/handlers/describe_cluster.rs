//! DescribeCluster (key 60).

use bytes::Bytes;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::{BrokerId, DescribeClusterRequest, DescribeClusterResponse};

use super::{str_bytes, Ctx, HandlerResult};

pub async fn handle(ctx: &Ctx<'_>, body: &mut Bytes) -> HandlerResult {
    let req: DescribeClusterRequest = ctx.decode(body)?;
    let c = &ctx.shard.config;
    let mut b = DescribeClusterBroker::default();
    b.broker_id = BrokerId(c.node_id);
    b.host = str_bytes(&c.advertised_host);
    b.port = c.advertised_port;
    let mut resp = DescribeClusterResponse::default();
    resp.cluster_id = str_bytes(&c.cluster_id);
    resp.controller_id = BrokerId(c.node_id);
    resp.brokers = vec![b];
    resp.cluster_authorized_operations = if req.include_cluster_authorized_operations {
        super::metadata::CLUSTER_OPERATIONS_ALL
    } else {
        i32::MIN
    };
    resp.endpoint_type = 1;
    Ok(ctx.respond(&resp))
}
