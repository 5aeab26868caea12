//! The gRPC side of the Open Inference Protocol (`inference.GRPCInferenceService`), as
//! `tritonclient.grpc` uses it; tensors travel as raw little-endian bytes or typed contents.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::error::ServeError;
use crate::proto::grpc_inference_service_server::{
    GrpcInferenceService, GrpcInferenceServiceServer,
};
use crate::proto::model_infer_response::InferOutputTensor;
use crate::proto::model_metadata_response::TensorMetadata;
use crate::proto::*;
use crate::state::ServerState;
use crate::tensor::{check_output, DataType, InputTensor, TensorData};

/// The gRPC service over `state`, with message limits from its options.
pub fn service(state: Arc<ServerState>) -> GrpcInferenceServiceServer<InferenceService> {
    let limit = state.options.max_body_bytes;
    GrpcInferenceServiceServer::new(InferenceService { state })
        .max_decoding_message_size(limit)
        .max_encoding_message_size(usize::MAX)
}

/// Implements the protocol's RPCs over the server's models.
pub struct InferenceService {
    state: Arc<ServerState>,
}

fn tensors(list: &[gantry_runtime::TensorInfo]) -> Vec<TensorMetadata> {
    list.iter()
        .map(|t| TensorMetadata {
            name: t.name.clone(),
            datatype: DataType::name_of_element(&t.element),
            shape: t.shape.iter().map(|d| d.map_or(-1, |d| d as i64)).collect(),
        })
        .collect()
}

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Ok(Response::new(ServerReadyResponse {
            ready: self.state.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let exists = self.state.models.get(&r.name, Some(&r.version)).is_ok();
        Ok(Response::new(ModelReadyResponse {
            ready: exists && self.state.is_ready(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: crate::SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: crate::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let model = self
            .state
            .models
            .get(&r.name, Some(&r.version))
            .map_err(|e| e.grpc_status())?;
        let info = model.generator().info();
        Ok(Response::new(ModelMetadataResponse {
            name: model.name().into(),
            versions: self.state.models.versions(model.name()),
            platform: crate::PLATFORM.into(),
            inputs: tensors(&info.inputs),
            outputs: tensors(&info.outputs),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        self.infer(request.into_inner())
            .await
            .map(Response::new)
            .map_err(|e| e.grpc_status())
    }
}

impl InferenceService {
    async fn infer(&self, r: ModelInferRequest) -> Result<ModelInferResponse, ServeError> {
        let model = self
            .state
            .models
            .get(&r.model_name, Some(&r.model_version))?
            .clone();
        let output_name = &model.generator().info().signature.output;
        let (id, inputs) = decode_request(r, output_name)?;
        let images = model
            .infer_tensors(inputs, self.state.options.request_timeout)
            .await?;
        Ok(ModelInferResponse {
            model_name: model.name().into(),
            model_version: model.version().into(),
            id,
            parameters: Default::default(),
            outputs: vec![InferOutputTensor {
                name: output_name.clone(),
                datatype: images.datatype.name().into(),
                shape: images.tensor_shape(),
                parameters: Default::default(),
                contents: None,
            }],
            raw_output_contents: vec![images.bytes],
        })
    }
}

/// A request's id and inputs, for a model whose output is `output_name`. Every error is the
/// client's (INVALID_ARGUMENT).
pub(crate) fn decode_request(
    r: ModelInferRequest,
    output_name: &str,
) -> Result<(String, Vec<InputTensor>), ServeError> {
    if !r.raw_input_contents.is_empty() && r.raw_input_contents.len() != r.inputs.len() {
        return Err(ServeError::bad(format!(
            "{} raw_input_contents for {} inputs",
            r.raw_input_contents.len(),
            r.inputs.len()
        )));
    }
    for o in &r.outputs {
        check_output(&o.name, output_name)?;
    }
    let mut raw = r.raw_input_contents.into_iter();
    let mut inputs = Vec::with_capacity(r.inputs.len());
    for input in r.inputs {
        let data = match raw.next() {
            Some(bytes) => TensorData::Raw(bytes),
            None => {
                let c = input.contents.unwrap_or_default();
                let numbers: Vec<f64> = if !c.fp32_contents.is_empty() {
                    c.fp32_contents.iter().map(|&v| v as f64).collect()
                } else {
                    c.int64_contents.iter().map(|&v| v as f64).collect()
                };
                TensorData::Numbers(numbers)
            }
        };
        inputs.push(InputTensor {
            name: input.name,
            datatype: input.datatype,
            shape: input.shape,
            data,
        });
    }
    Ok((r.id, inputs))
}
