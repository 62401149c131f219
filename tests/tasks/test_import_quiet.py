"""Importing rope_behavior prints nothing: no tqdm "IProgress not found" warning in a
Jupyter kernel without ipywidgets (``tqdm.auto`` warns when imported there), and no
warning at all under ``python -W error``. Each check runs in a fresh interpreter."""

import subprocess
import sys
import textwrap

import pytest

KERNEL = textwrap.dedent(
    """
    import sys, types, warnings
    sys.modules["ipykernel.zmqshell"] = types.ModuleType("ipykernel.zmqshell")
    sys.modules["ipywidgets"] = None  # a kernel without ipywidgets
    import IPython
    class ZMQInteractiveShell: pass
    IPython.get_ipython = lambda: ZMQInteractiveShell()
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )


def test_import_under_w_error_is_silent():
    run = _run("import rope_behavior")
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stderr == ""
    run = subprocess.run(
        [sys.executable, "-W", "error", "-c", "import rope_behavior"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]


def test_no_iprogress_warning_in_a_kernel_without_ipywidgets():
    pytest.importorskip("IPython")
    code = KERNEL + textwrap.dedent(
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import rope_behavior
        assert not caught, [str(w.message) for w in caught]
        # TransformerLens's own imports (huggingface_hub) import tqdm.auto and warn there;
        # rope_behavior's modules must not import it again on their own
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import transformer_lens
        for name in ("tqdm.auto", "tqdm.autonotebook"):
            sys.modules.pop(name, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            import rope_behavior.tasks.training as training
            training.progress_bar(total=2, disable=True).close()
            from rope_behavior.runtime.executors import ShardProgress
            with ShardProgress(True, 2, "shards"):  # a sweep's bar over shards
                pass
        assert not caught, [str(w.message) for w in caught]
        assert "tqdm.auto" not in sys.modules  # no ipywidgets: the text bar
        print("ok")
        """
    )
    run = _run(code)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip() == "ok"
