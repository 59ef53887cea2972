//! `Flows`: tracing an event's hops (filled from the audit trail; not built yet).

use kakehashi_proto::v1::{flows_server::Flows, TraceEventRequest, TraceEventResponse};
use tonic::{Request, Response, Status};

/// The Flows service.
#[derive(Clone, Default)]
pub struct FlowsService;

#[tonic::async_trait]
impl Flows for FlowsService {
    async fn trace_event(
        &self,
        _: Request<TraceEventRequest>,
    ) -> Result<Response<TraceEventResponse>, Status> {
        Err(Status::unimplemented("TraceEvent needs the audit trail, which is not built yet"))
    }
}
