"""Training TERN, TERAN and SGRAF on a region store and a caption store.

* :mod:`~trainers.training.config` — :class:`TrainConfig`, the paper presets, the LR schedule;
* :mod:`~trainers.training.model` — the model and optimiser a run trains;
* :mod:`~trainers.training.step` — one optimisation step (VSE++ hinge loss);
* :mod:`~trainers.training.validation` — scoring the val split;
* :mod:`~trainers.training.rng` — seeding and RNG states for exact resume;
* :mod:`~trainers.training.run_dir` — the run directory and its checkpoints;
* :mod:`~trainers.training.loop` — :class:`Trainer`, the training loop;
* :mod:`~trainers.training.run` — :func:`train`, the library entry point (one process or Ray Train);
* :mod:`~trainers.training.distributed` / :mod:`~trainers.training.ray_train` — several workers.
"""

from trainers.training.config import TrainConfig, build_config, learning_rate, preset
from trainers.training.loop import Trainer
from trainers.training.run import train
from trainers.training.validation import evaluate_split

__all__ = ["TrainConfig", "Trainer", "build_config", "evaluate_split", "learning_rate", "preset",
           "train"]
