"""turbo-runtime: SD-Turbo-family models exported once, run on PyTorch, ONNX Runtime or OpenVINO by one loop."""

from turbo_runtime.pipeline import PipelineOutput, TurboPipeline

__all__ = ["PipelineOutput", "TurboPipeline"]
