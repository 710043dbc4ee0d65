"""Every benchmark in one room: each prints a table and writes JSON (speed is measured here, never in tests).

========================  =======================================================================
module                    what it measures
========================  =======================================================================
``backends``              ``evit-ros bench``: backends against a plain PyTorch baseline, per stage
``stages``                ``evit-ros bench --stages`` / ``python -m evit_ros.bench.stages``: host
                          stages only (decode .. occupancy grid), no network
``heads``                 ``python -m evit_ros.bench.heads``: each graph head's cost as a share of
                          the network on ONNX Runtime
``node``                  ``python -m evit_ros.bench.node``: the node over DDS against bare
                          inference, a no-work echo node and a plainly written node
``node_baselines``        the reference processes ``node`` starts (plain, floor, echo)
``eval_executors``        ``python -m evit_ros.bench.eval_executors``: local vs Ray eval executors
========================  =======================================================================

The node benchmarks talk DDS, so they import rclpy (inside functions, as :mod:`evit_ros.ros` does at the
top): the only rclpy importers outside :mod:`evit_ros.ros`.
"""
