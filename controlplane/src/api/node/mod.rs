//! `kairos.fleet.v1.NodeService`: enrollment and the node's session.
//!
//! `Enroll` is the only call without a client certificate (the bootstrap
//! token is the credential); `Connect` requires the node certificate, and
//! the node id always comes from that certificate, never from a message,
//! so a node can only ever speak for itself.

mod batch;
pub mod enroll;

use kairos_fleet_proto::fleet::v1 as pb;
use pb::node_service_server::{NodeService, NodeServiceServer};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::sessions::Sessions;
pub use enroll::Enroller;

/// Largest message a node may send (a Hello with 64 labels fits many times).
pub const MAX_NODE_MESSAGE_BYTES: usize = 256 * 1024;

/// The node service of one replica.
pub struct NodeApi {
    enroller: Enroller,
    sessions: Sessions,
}

impl NodeApi {
    /// The service over this replica's enroller and sessions.
    pub fn new(enroller: Enroller, sessions: Sessions) -> Self {
        NodeApi { enroller, sessions }
    }

    /// The tonic server for this service, with the node message limit.
    pub fn into_server(self) -> NodeServiceServer<Self> {
        NodeServiceServer::new(self)
            .max_decoding_message_size(MAX_NODE_MESSAGE_BYTES)
            .max_encoding_message_size(crate::raft::MAX_MESSAGE_BYTES)
    }
}

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn enroll(&self, request: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        self.enroller.enroll(request).await
    }

    type ConnectStream = ReceiverStream<Result<pb::ServerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<pb::NodeMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        self.sessions.connect(request).await
    }
}
