"""The ``rope-behavior`` command line: the parser and the small commands (:mod:`.app`), the
main job's commands ``analyze`` / ``demo`` / ``sweep`` (:mod:`.main_job`), and model and
prompt loading with one-line errors (:mod:`.models`)."""

from rope_behavior.cli.app import main

__all__ = ["main"]
