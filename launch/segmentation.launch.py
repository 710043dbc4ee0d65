"""Launch the evit_ros segmentation node (and optionally RViz).

    ros2 launch evit_ros segmentation.launch.py [params_file:=FILE] [namespace:=NS] [use_sim_time:=true]
                                                [rviz:=true] [log_level:=debug]

``params_file`` defaults to the installed ``share/evit_ros/config/evit_ros.yaml`` (found through the ament
index). Its parameters sit under ``/**`` so they apply inside any ``namespace``.
"""
from launch import LaunchDescription  # noqa: I001 - launch is the ROS package, not ./launch
from launch.actions import DeclareLaunchArgument
from launch.conditions import IfCondition
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'evit_ros'


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    params_file = LaunchConfiguration('params_file')
    namespace = LaunchConfiguration('namespace')
    use_sim_time = ParameterValue(LaunchConfiguration('use_sim_time'), value_type=bool)
    arguments = [
        DeclareLaunchArgument('params_file', default_value=PathJoinSubstitution([share, 'config', 'evit_ros.yaml']),
                              description='Node parameters (YAML, ros__parameters under /**)'),
        DeclareLaunchArgument('namespace', default_value='', description='Namespace of the node and its topics'),
        DeclareLaunchArgument('use_sim_time', default_value='false', choices=['true', 'false'],
                              description='Follow /clock (rosbag replay with --clock)'),
        DeclareLaunchArgument('rviz', default_value='false', choices=['true', 'false'],
                              description='Also start RViz with config/evit_ros.rviz'),
        DeclareLaunchArgument('log_level', default_value='info',
                              choices=['debug', 'info', 'warn', 'error', 'fatal'], description='Node log level'),
    ]
    node = Node(
        package=PACKAGE,
        executable='segmentation_node',
        name='evit_segmentation',
        namespace=namespace,
        parameters=[params_file, {'use_sim_time': use_sim_time}],
        arguments=['--ros-args', '--log-level', LaunchConfiguration('log_level')],
        output='screen',
        emulate_tty=True,
    )
    rviz = Node(
        package='rviz2',
        executable='rviz2',
        name='evit_rviz',
        namespace=namespace,
        arguments=['-d', PathJoinSubstitution([share, 'config', 'evit_ros.rviz'])],
        parameters=[{'use_sim_time': use_sim_time}],
        condition=IfCondition(LaunchConfiguration('rviz')),
        output='screen',
    )
    return LaunchDescription([*arguments, node, rviz])
