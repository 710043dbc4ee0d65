"""Offline and live evaluation of the segmentation pipeline on ROS 2 bags and Cityscapes.

Importing this package needs neither torch nor rclpy; the pipeline and backends are imported when a run starts.
"""
from evit_ros.eval.metrics import ConfusionMatrix, LatencyStats
from evit_ros.eval.runner import PipelineFactory, evaluate_bag, evaluate_bags, run_events
from evit_ros.eval.scoring import EvalSpec, EvalState

__all__ = ['ConfusionMatrix', 'LatencyStats', 'EvalSpec', 'EvalState', 'PipelineFactory', 'evaluate_bag',
           'evaluate_bags', 'run_events']
