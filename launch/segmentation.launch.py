"""Launch the evit_ros segmentation node (and optionally RViz).

    ros2 launch evit_ros segmentation.launch.py [params_file:=FILE] [namespace:=NS] [use_sim_time:=true]
                                                [rviz:=true] [log_level:=debug] [autostart:=false]
                                                [fastdds_profile:=off]

``params_file`` defaults to the installed ``share/evit_ros/config/evit_ros.yaml`` (found through the ament
index); ``~`` and ``$VARIABLES`` in it are expanded (launch_ros would take them literally and run the node on
built-in defaults); a params file that does not exist fails the launch (the node never runs on silent defaults).
Its parameters sit under ``/**`` so they apply inside any ``namespace``. ``use_sim_time`` and ``rviz`` take
true/false in any case (True, 1, yes). ``log_level`` applies to the node's own logger only, not to rcl/rmw.
``rviz:=true`` without rviz2 installed warns and runs the node alone. ``autostart`` (default true) sets the
node's ``lifecycle.autostart`` (over the params file): false leaves the managed node unconfigured for a
lifecycle manager (Nav2's lifecycle_manager, ``ros2 lifecycle set``). ``fastdds_profile`` sets
``EVIT_ROS_FASTDDS_PROFILE`` for the node: ``node`` (its own Fast DDS participant profile, what it does anyway when
the environment configures no Fast DDS profile) or ``off``; empty (default): the environment decides.

The launch ends when the node exits: with exit code 0 when the node ended cleanly (exit 0), with exit code 1
and one ``[ERROR] [launch]`` line naming the node's exit code when it failed (a startup failure is the node's
exit code 2), so a systemd unit running ``ros2 launch`` sees the failure. (launch itself returns only 0 or 1.)
"""
import os  # noqa: I001 - launch is the ROS package, not ./launch
from pathlib import Path

import launch.logging
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, Shutdown
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

PACKAGE = 'evit_ros'
NODE_NAME = 'evit_segmentation'
TRUE, FALSE = ('true', '1', 'yes', 'on'), ('false', '0', 'no', 'off')
LOG_LEVELS = ('debug', 'info', 'warn', 'error', 'fatal')
FASTDDS_PROFILE_ENV = 'EVIT_ROS_FASTDDS_PROFILE'   # read by evit_ros.ros.transport before rclpy starts
FASTDDS_PROFILE_CHOICES = ('', 'node', 'off')


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


def expand_path(value: str) -> str:
    """``~`` and ``$VAR``/``${VAR}`` expanded, as a shell would (launch passes the argument on literally)."""
    return os.path.expanduser(os.path.expandvars(value.strip()))


class NodeFailed(RuntimeError):
    """Raised from the node's exit handler: launch reports it as one error line and exits with code 1."""


def on_node_exit(event, context):  # noqa: ANN001, ANN201 - launch's on_exit callable signature
    """End the whole launch when the node exits; a non-zero exit code makes the launch exit non-zero.

    launch returns 1 only when an action or event handler raises, so a failed node raises here (unless the
    launch is already shutting down, e.g. after Ctrl-C, where the exit code belongs to that shutdown).
    """
    code = event.returncode
    if code == 0 or context.is_shutdown:
        return [Shutdown(reason=f'{NODE_NAME} exited with code {code}')]
    why = 'startup failed, see its FATAL line above' if code == 2 else 'see its log above'
    raise NodeFailed(f'{NODE_NAME} exited with code {code} ({why}); ending the launch with exit code 1')


def _actions(context, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - launch's OpaqueFunction signature
    given = LaunchConfiguration('params_file').perform(context)
    params_file = expand_path(given)
    namespace = LaunchConfiguration('namespace').perform(context)
    use_sim_time = as_bool('use_sim_time', LaunchConfiguration('use_sim_time').perform(context))
    want_rviz = as_bool('rviz', LaunchConfiguration('rviz').perform(context))
    autostart = as_bool('autostart', LaunchConfiguration('autostart').perform(context))
    log_level = LaunchConfiguration('log_level').perform(context).strip().lower()
    fastdds_profile = LaunchConfiguration('fastdds_profile').perform(context).strip().lower()
    if fastdds_profile not in FASTDDS_PROFILE_CHOICES:
        raise RuntimeError(f'fastdds_profile:={fastdds_profile} is not valid; use node or off (or leave it empty)')
    if log_level not in LOG_LEVELS:
        raise RuntimeError(f'log_level:={log_level} is not valid; use one of: {", ".join(LOG_LEVELS)}')
    if not Path(params_file).is_file():
        shown = given if given == params_file else f'{given} ({params_file})'
        raise RuntimeError(f'params_file:={shown} does not exist; pass an existing YAML (default: the '
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
        on_exit=on_node_exit,
        additional_env={FASTDDS_PROFILE_ENV: fastdds_profile} if fastdds_profile else None,
    )]
    if want_rviz and not rviz2_installed():
        launch.logging.get_logger('evit_ros.launch').warning(
            'rviz:=true but rviz2 is not installed (apt install ros-$ROS_DISTRO-rviz2); running the node without RViz')
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
        DeclareLaunchArgument('fastdds_profile', default_value='',
                              description='node: the node\'s own Fast DDS profile (frames in over UDP; applied '
                                          'anyway when no Fast DDS profile is configured), off: Fast DDS as the '
                                          'environment configures it; empty: the environment decides'),
    ]
    return LaunchDescription([*arguments, OpaqueFunction(function=_actions)])
