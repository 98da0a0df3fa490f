"""The one layer that joins cadx's computation with the database; the CLI and the app both call it.

The package's names are imported lazily (as scikit-image does): ``from cadx.workflows import open_workspace`` imports
only the submodule that defines it, so a process that needs one corner (a spawned worker, a CLI command) does not pay
for all of them. What the package exports, and from where, is listed once, in ``__init__.pyi``.
"""

import lazy_loader as _lazy

__getattr__, __dir__, __all__ = _lazy.attach_stub(__name__, __file__)
