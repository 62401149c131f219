"""Golden numbers recorded from a frozen copy of the package (``scripts/record_goldens.py``)
and the code that computes them (:mod:`tests.goldens.compute`)."""
