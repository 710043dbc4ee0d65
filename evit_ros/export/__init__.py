"""Model-to-engine path: deployable graph, verified ONNX export, TensorRT engines and their cache.

Submodules import torch/onnx/tensorrt lazily where they can; import what you need directly, e.g.
``from evit_ros.export.onnx_export import export_onnx``.
"""
