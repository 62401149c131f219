"""Scores over training: heads' positional / symbolic scores and frequency usage at chosen
steps of a training run (:class:`Tracker`), stored as tidy rows (:class:`Trajectory`)."""

from rope_behavior.tracking.callbacks import trainer_callback
from rope_behavior.tracking.tracker import Tracker
from rope_behavior.tracking.trajectory import Trajectory, load_trajectory

__all__ = ["Tracker", "Trajectory", "load_trajectory", "trainer_callback"]
