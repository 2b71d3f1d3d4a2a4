//! Enrollment: a bootstrap token and a CSR in, a node certificate out.

use kairos_fleet_proto::fleet::v1 as pb;
use tonic::{Request, Response, Status};

use crate::replica::ReplicaClient;

/// Signs node certificates for enroll requests.
pub struct Enroller {
    _client: ReplicaClient,
}

impl Enroller {
    /// An enroller writing through `client`.
    pub fn new(client: ReplicaClient) -> Self {
        Enroller { _client: client }
    }

    /// Serves one `Enroll` call.
    pub async fn enroll(&self, _request: Request<pb::EnrollRequest>) -> Result<Response<pb::EnrollResponse>, Status> {
        Err(Status::unimplemented("enrollment is not available on this replica"))
    }
}
