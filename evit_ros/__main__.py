"""``python -m evit_ros`` is the ``evit-ros`` command."""
import sys

from evit_ros.cli.main import main

sys.exit(main())
