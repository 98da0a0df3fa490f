"""cadx: breast-lesion CADx from mammograms (Huynh, Li & Giger, J. Med. Imag. 3(3) 034501, 2016).

The package's computation modules (``io``, ``roi``, ``phantoms``, ...) take arrays and return results; they
import neither the database (``db``) nor the app. ``cadx.workflows`` is the one place that joins them.
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
