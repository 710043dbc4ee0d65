"""``tools/import_graph.py`` loaded as a module, for the tests that check the package's structure."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

TOOL = Path(__file__).resolve().parents[1] / 'tools' / 'import_graph.py'


def load_import_graph() -> ModuleType:
    if 'import_graph' in sys.modules:
        return sys.modules['import_graph']
    spec = importlib.util.spec_from_file_location('import_graph', TOOL)
    if spec is None or spec.loader is None:
        raise ImportError(f'cannot load {TOOL}')
    mod = importlib.util.module_from_spec(spec)
    sys.modules['import_graph'] = mod
    spec.loader.exec_module(mod)
    return mod
