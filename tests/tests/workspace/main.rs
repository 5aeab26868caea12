//! Gantry's workspace tests (one binary): training through the library, the exported model run
//! by ONNX Runtime against candle, the runtime library, a training step against numbers
//! produced by PyTorch, and the whole train -> export -> generate path.

mod architecture;
mod end_to_end;
mod export_parity;
mod fuzz;
mod golden_step;
mod inception_metrics;
mod properties;
mod reduced_precision;
mod resnet_reference;
mod runtime_library;
mod training;
