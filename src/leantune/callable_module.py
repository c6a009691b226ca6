"""`leantune.train(...)` and `leantune.evaluate(...)` are functions, but `leantune.train` and `leantune.evaluate`
are also packages, and importing a package sets the parent's attribute to the module, hiding the function.
Making those two modules callable keeps `leantune.evaluate(...)` working however the package was imported."""

from __future__ import annotations

import sys
import types


def make_callable(module_name: str, function) -> None:
    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return function(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule
