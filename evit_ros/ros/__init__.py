"""ROS 2 layer: the segmentation node, its parameters, message conversions, diagnostics and the bag player.

Only this package imports rclpy, and only in the modules that need it (``params`` and ``conversions`` import
ROS message types lazily), so the rest of evit_ros works without a ROS installation.
"""
