"""The device layer: CUDA runtime calls, device and pinned buffers, streams, graphs, and GPU identity.

Below both :mod:`evit_ros.export` (engine builds, INT8 calibration) and :mod:`evit_ros.backends` (the
TensorRT runtime); it imports neither. Nothing here needs PyTorch; importing it never needs a GPU.
"""
