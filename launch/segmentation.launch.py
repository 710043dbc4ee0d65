"""Launch the evit_ros segmentation node (and optionally RViz).

    ros2 launch evit_ros segmentation.launch.py [params_file:=FILE] [namespace:=NS] [use_sim_time:=true]
                                                [rviz:=true] [log_level:=debug] [autostart:=false]

``params_file`` defaults to the installed ``share/evit_ros/config/evit_ros.yaml`` (found through the ament
index); a params file that does not exist fails the launch (the node never runs on silent defaults). Its
parameters sit under ``/**`` so they apply inside any ``namespace``. ``use_sim_time`` and ``rviz`` take
true/false in any case (True, 1, yes). ``log_level`` applies to the node's own logger only, not to rcl/rmw.
``rviz:=true`` without rviz2 installed warns and runs the node alone. ``autostart`` (default true) sets the
node's ``lifecycle.autostart`` (over the params file): false leaves the managed node unconfigured for a
lifecycle manager (Nav2's lifecycle_manager, ``ros2 lifecycle set``).
"""
from pathlib import Path  # noqa: I001 - launch is the ROS package, not ./launch

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'evit_ros'
NODE_NAME = 'evit_segmentation'
TRUE, FALSE = ('true', '1', 'yes', 'on'), ('false', '0', 'no', 'off')
LOG_LEVELS = ('debug', 'info', 'warn', 'error', 'fatal')


def as_bool(name: str, value: str) -> bool:
    """'true'/'True'/'1'/'yes' -> True, 'false'/'False'/'0'/'no' -> False; anything else fails the launch."""
    v = value.strip().lower()
    if v in TRUE:
        return True
    if v in FALSE:
        return False
    raise RuntimeError(f'{name}:={value} is not a boolean; use true or false')


def node_logger_name(namespace: str) -> str:
    """The rcutils logger name of the node in ``namespace`` ('/car1' -> 'car1.evit_segmentation')."""
    parts = [p for p in namespace.strip('/').split('/') if p]
    return '.'.join([*parts, NODE_NAME])


def rviz2_installed() -> bool:
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return False
    try:
        get_package_prefix('rviz2')
    except PackageNotFoundError:
        return False
    return True


def _actions(context, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - launch's OpaqueFunction signature
    params_file = LaunchConfiguration('params_file').perform(context)
    namespace = LaunchConfiguration('namespace').perform(context)
    use_sim_time = as_bool('use_sim_time', LaunchConfiguration('use_sim_time').perform(context))
    want_rviz = as_bool('rviz', LaunchConfiguration('rviz').perform(context))
    autostart = as_bool('autostart', LaunchConfiguration('autostart').perform(context))
    log_level = LaunchConfiguration('log_level').perform(context).strip().lower()
    if log_level not in LOG_LEVELS:
        raise RuntimeError(f'log_level:={log_level} is not valid; use one of: {", ".join(LOG_LEVELS)}')
    if not Path(params_file).expanduser().is_file():
        raise RuntimeError(f'params_file:={params_file} does not exist; pass an existing YAML (default: the '
                           'installed share/evit_ros/config/evit_ros.yaml)')
    actions = [Node(
        package=PACKAGE,
        executable='segmentation_node',
        name=NODE_NAME,
        namespace=namespace,
        parameters=[params_file, {'use_sim_time': use_sim_time}, {'lifecycle.autostart': autostart}],
        # the node's logger only: a bare --log-level would set rcl/rmw's global level too
        arguments=['--ros-args', '--log-level', f'{node_logger_name(namespace)}:={log_level}'],
        output='screen',
        emulate_tty=True,
    )]
    if want_rviz and not rviz2_installed():
        actions.append(LogInfo(msg='[WARN] rviz:=true but rviz2 is not installed (apt install ros-$ROS_DISTRO-rviz2); '
                                   'running the node without RViz'))
    elif want_rviz:
        share = FindPackageShare(PACKAGE)
        actions.append(Node(
            package='rviz2',
            executable='rviz2',
            name='evit_rviz',
            namespace=namespace,
            arguments=['-d', PathJoinSubstitution([share, 'config', 'evit_ros.rviz'])],
            parameters=[{'use_sim_time': use_sim_time}],
            output='screen',
        ))
    return actions


def generate_launch_description() -> LaunchDescription:
    share = FindPackageShare(PACKAGE)
    arguments = [
        DeclareLaunchArgument('params_file', default_value=PathJoinSubstitution([share, 'config', 'evit_ros.yaml']),
                              description='Node parameters (YAML, ros__parameters under /**); must exist'),
        DeclareLaunchArgument('namespace', default_value='', description='Namespace of the node and its topics'),
        DeclareLaunchArgument('use_sim_time', default_value='false',
                              description='Follow /clock (rosbag replay with --clock); true/false, any case'),
        DeclareLaunchArgument('rviz', default_value='false',
                              description='Also start RViz with config/evit_ros.rviz (skipped with a warning '
                                          'when rviz2 is not installed)'),
        DeclareLaunchArgument('log_level', default_value='info',
                              description='Log level of the node (not of rcl/rmw): debug, info, warn, error, fatal'),
        DeclareLaunchArgument('autostart', default_value='true',
                              description='Configure and activate the (lifecycle) node at startup; false: leave it '
                                          'unconfigured for a lifecycle manager / ros2 lifecycle set'),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_actions)])
