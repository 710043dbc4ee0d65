"""evit_ros: EfficientViT semantic segmentation for ROS 2.

The package is a ROS-free core (model, export, backends, pipeline, eval) plus a thin ROS layer in
``evit_ros.ros``, the only subpackage that imports rclpy or ROS messages. Importing this package
imports nothing heavy.
"""

__version__ = '0.1.0'
