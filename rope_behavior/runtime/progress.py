"""Progress bars, imported when a bar is made (not with the package)."""

from typing import Any

__all__ = ["progress_bar"]


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar: the notebook widget where ipywidgets is installed, else the text bar.
    ``tqdm.auto`` in a Jupyter kernel without ipywidgets warns "IProgress not found" when
    imported."""
    from importlib.util import find_spec

    if find_spec("ipywidgets") is not None:
        from tqdm.auto import tqdm
    else:
        from tqdm.std import tqdm
    return tqdm(**kwargs)
