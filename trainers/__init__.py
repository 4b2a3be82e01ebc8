"""Trainers: the default ``Trainer``, its variants, and lookup of any trainer by class name.

Subclass ``Trainer`` in a file of your own, put its folder on ``AUTOSEG_TRAINER_PATH`` (or pass
``--trainer-path``), and ``autoseg run_training STAGE YourTrainer ID FOLD`` finds it.
"""
from autoseg.trainers.trainer import Trainer
from autoseg.trainers.variants import TrainerFinetune, TrainerShort, TrainerTumourDynamicWeights
from autoseg.trainers.registry import find_trainer, known_trainers
from autoseg.trainers.cli import add_cli_arguments, run_from_args
from autoseg.trainers.run import run_training

__all__ = ["Trainer", "TrainerShort", "TrainerFinetune", "TrainerTumourDynamicWeights", "find_trainer",
           "known_trainers", "run_training", "add_cli_arguments", "run_from_args"]
