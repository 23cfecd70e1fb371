"""Training qsink's own model family from YAML recipes."""

from qsink.train.loop import TrainResult, loss_window_labels, train
from qsink.train.recipe import TrainRecipe, load_recipe

__all__ = ["TrainRecipe", "TrainResult", "load_recipe", "loss_window_labels", "train"]
