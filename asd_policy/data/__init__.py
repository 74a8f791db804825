"""Demonstrations in and out: robomimic-format hdf5 and LeRobot v3.0 datasets read
(:func:`load_demonstrations`) and written (:class:`RobomimicWriter`, :class:`LeRobotWriter`), and
demo collection from a task's scripted expert (``asd_policy.data.collect``, imported on its own:
it needs the simulators). This file only re-exports.
"""
from asd_policy.data.demos import Demonstrations, Episode
from asd_policy.data.lerobot import is_lerobot_dataset, load_lerobot_dataset
from asd_policy.data.lerobot_export import LeRobotWriter
from asd_policy.data.load import load_demonstrations
from asd_policy.data.robomimic import load_robomimic
from asd_policy.data.robomimic_export import RobomimicWriter

__all__ = ["Demonstrations", "Episode", "LeRobotWriter", "RobomimicWriter", "is_lerobot_dataset",
           "load_demonstrations", "load_lerobot_dataset", "load_robomimic"]
