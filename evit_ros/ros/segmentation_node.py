"""The ROS 2 segmentation node ``evit_segmentation``: cameras in, masks, drivable area, grids and diagnostics out.

This module is the process entry point (``main``): the ``segmentation_node`` console script and
``python -m evit_ros.ros.segmentation_node`` run it. It starts rclpy, builds the node, spins it until
SIGINT/SIGTERM/SIGHUP and tears it down within the shutdown promise; every startup failure is one ``FATAL`` line and
exit code 2. The node itself is in three modules, each importing only the ones below it:

* :mod:`evit_ros.ros.node`: :class:`SegmentationNode`, the lifecycle shell (transitions, parameters,
  publishers, camera subscriptions and QoS polling, diagnostics timer);
* :mod:`evit_ros.ros.worker`: the per-camera mailboxes and the frame worker thread (decode, batch through
  :class:`~evit_ros.pipeline.Segmenter`, publish through :mod:`evit_ros.ros.outputs`, record statistics);
* :mod:`evit_ros.ros.backend_loader`: loading/building the engine at configure.

Outputs (relative names, so namespaces and remaps work), all stamped with the input header:
``segmentation/<cam>/{mask, color_mask, overlay, confidence}`` and
``segmentation/<cam>/drivable/<group>/{mask, grid, boundary}`` (grid and boundary carry the input stamp and
``grid.frame_id``). An output is computed and published only while something subscribes to it.
``segmentation/<cam>/label_info`` (vision_msgs/LabelInfo, latched) names the class ids for Nav2's
semantic_segmentation_layer when vision_msgs is installed.

Run: ``ros2 run evit_ros segmentation_node --ros-args --params-file config/evit_ros.yaml`` or
``python -m evit_ros.ros.segmentation_node --ros-args ...``.
"""
from __future__ import annotations

import sys
import time

import rclpy
import rclpy.executors
import rclpy.logging
from rclpy.signals import SignalHandlerOptions

from evit_ros.heap import keep_frame_buffers
from evit_ros.ros.node import NODE_NAME, SegmentationNode
from evit_ros.ros.startup import SignalFlag, check_ros_args, exit_now, one_line, startup_error
from evit_ros.ros.transport import apply_node_profile

try:  # Jazzy: spin raises this when the context is shut down by a signal
    from rclpy.executors import ExternalShutdownException
except ImportError:  # pragma: no cover - older rclpy
    class ExternalShutdownException(Exception):  # type: ignore[no-redef]
        """Placeholder where rclpy lacks it."""


def _fatal(message: str) -> int:
    rclpy.logging.get_logger(NODE_NAME).fatal(f'startup failed: {message}')
    return 2


def main(args: list[str] | None = None) -> int:
    """Console entry point (``segmentation_node``): run until SIGINT/SIGTERM/SIGHUP (exit 0, one log line);
    exit 2 on any startup failure.

    rclpy's own signal handlers are off: SIGINT/SIGTERM/SIGHUP during startup end the process at once (exit 0),
    and while running they end the spin loop within 0.1 s (an export or engine build in progress runs in a
    child process, which is ended, see :mod:`evit_ros.ros.prepare`). Shutdown keeps to 2 s at any uptime: when
    the worker is still inside a long inference after its grace time, the process exits without waiting for it.
    """
    argv = list(sys.argv if args is None else args)
    flag = SignalFlag().install()
    flag.log = rclpy.logging.get_logger(NODE_NAME).info
    # process-wide: frame-sized messages reuse heap memory instead of fresh pages (see evit_ros/heap.py)
    heap_kept = keep_frame_buffers()
    node: SegmentationNode | None = None
    try:
        check_ros_args(argv)
        apply_node_profile()   # before rclpy.init: the participant reads its Fast DDS profile once, at creation
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
        node = SegmentationNode()
        flag.exit_on_signal = False   # from here on a signal only ends the spin loop
    except Exception as exc:  # noqa: BLE001 - every startup failure is one FATAL line
        code = _fatal(startup_error(exc))
        _quiet_teardown(node)
        return code
    if node.build_only:
        _quiet_teardown(node)
        return 0
    if not heap_kept:
        node.get_logger().info('the C library did not take the heap settings for frame buffers (not glibc?); '
                               'large frames will cost fresh pages each time')
    executor = rclpy.executors.SingleThreadedExecutor()
    executor.add_node(node)
    t_stop = None
    try:
        while not flag.event.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception as exc:  # noqa: BLE001 - report, then shut down cleanly
        node.get_logger().error(f'executor failed: {type(exc).__name__}: {one_line(exc)}')
    finally:
        t_stop = time.monotonic()
        if flag.signum:
            node.get_logger().info(f'{flag.name} received: shutting down')
        node.shutdown(timeout_s=1.0)
        worker_alive = node.worker_alive()
        try:
            executor.shutdown(timeout_sec=0.2)
        except Exception:  # noqa: BLE001 - shutting down anyway
            pass
        if worker_alive:
            # the worker is inside a long inference: do not wait for it (the 2 s promise), do not free the
            # backend under it; the OS releases everything
            node.get_logger().warning(f'worker still busy {time.monotonic() - t_stop:.1f} s after the signal; '
                                      'exiting without waiting for it')
        else:
            _quiet_teardown(node)
    # Interpreter finalization with torch/ONNX Runtime/OpenCV loaded takes ~2 s on a small CPU: the node has
    # released everything it owns, so end the process now (the 2 s shutdown promise holds at any uptime).
    exit_now(0)
    return 0


def _quiet_teardown(node: SegmentationNode | None) -> None:
    """Destroy the node (if any) and shut rclpy down, ignoring a context a signal already invalidated."""
    if node is not None:
        try:
            node.destroy_node()
        except Exception:  # noqa: BLE001 - the context may already be gone
            pass
    try:
        rclpy.try_shutdown()
    except Exception:  # noqa: BLE001
        pass


if __name__ == '__main__':
    sys.exit(main(sys.argv))


__all__ = ['NODE_NAME', 'SegmentationNode', 'main']
