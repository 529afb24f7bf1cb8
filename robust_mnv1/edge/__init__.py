"""The shipped model: ONNX fp32/int8 export, the robustness of the deployed files, and transfer
between models."""
