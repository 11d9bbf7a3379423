//! DeepDream and style transfer on the pretrained networks, streamed.

use oneiro_proto::v1 as pb;
use tonic::{Response, Status};

use super::{EventStream, OneiroService};
use crate::techniques::{dream, style};

impl OneiroService {
    pub(super) async fn dream_rpc(
        &self,
        req: pb::DreamRequest,
    ) -> Result<Response<EventStream<pb::DreamEvent>>, Status> {
        self.streamed(
            move |config| dream::plan(req, config),
            |plan, events| plan.command(events),
        )
        .await
    }

    pub(super) async fn style_rpc(
        &self,
        req: pb::StyleRequest,
    ) -> Result<Response<EventStream<pb::StyleEvent>>, Status> {
        self.streamed(
            move |config| style::plan(req, config),
            |plan, events| plan.command(events),
        )
        .await
    }
}
