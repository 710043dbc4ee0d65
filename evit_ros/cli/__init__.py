"""Command-line tools (``evit-ros <command>``); the only place allowed to call ``sys.exit``."""
