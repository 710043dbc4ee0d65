"""ament_python packaging for evit_ros (colcon build, ros2 run, ros2 launch)."""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = 'evit_ros'
SHARE = os.path.join('share', PACKAGE)

setup(
    name=PACKAGE,
    version='0.1.0',
    packages=find_packages(exclude=['tests', 'tests.*']),
    package_data={PACKAGE: ['data/*']},
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        (SHARE, ['package.xml', 'README.md']),
        (os.path.join(SHARE, 'launch'), glob('launch/*.launch.py')),
        (os.path.join(SHARE, 'config'), glob('config/*.yaml') + glob('config/*.rviz') + glob('config/*.xml')),
    ],
    install_requires=['setuptools', 'numpy', 'pyyaml'],
    extras_require={'test': ['pytest', 'onnx', 'onnxruntime', 'rosbags'],
                    # `evit-ros eval --executor ray`: the driver and every worker node need it
                    'ray': ['ray>=2.10']},
    zip_safe=False,
    maintainer='evit_ros developers',
    maintainer_email='evit-ros@example.com',
    description='EfficientViT semantic segmentation node for ROS 2 (TensorRT, ONNX Runtime, PyTorch)',
    license='Apache-2.0',
    python_requires='>=3.10',
    entry_points={
        'console_scripts': [
            'segmentation_node = evit_ros.ros.segmentation_node:main',
            'evit-ros = evit_ros.cli.main:main',
        ],
    },
)
