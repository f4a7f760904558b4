"""The Accelerate loop shared by Mu2SLAM pre-training and fine-tuning.

    recipe = load_recipe("configuration/recipes/pretrain-small.yaml")
    result = train(recipe, "data/synth", output_dir="runs/pt", resume=True)

Recipes (`recipe`), the Transformer schedule (`schedule`), processor/model setup (`assets`), mixture draws built
into instances (`instance_stream`), loss accounting (`losses`), dev evaluation (`dev`), atomic checkpoints (`checkpointing`)
and the loop (`loop`).
"""

from ..instances import InstanceBuilder
from .checkpointing import checkpoint_steps, latest_checkpoint, save_checkpoint
from .dev import DevEvaluator, dev_subset
from .instance_stream import InstanceStream, MixtureDraw, instance_loader, step_generator
from .loop import Mu2SlamTrainer, TrainingResult, make_accelerator, train
from .losses import LossTracker
from .recipe import Recipe, RecipeError, load_recipe, recipe_from_dict
from .schedule import inverse_sqrt_factor, peak_lr, transformer_lr, transformer_schedule

__all__ = [
    "DevEvaluator",
    "InstanceBuilder",
    "InstanceStream",
    "LossTracker",
    "MixtureDraw",
    "Mu2SlamTrainer",
    "Recipe",
    "RecipeError",
    "TrainingResult",
    "checkpoint_steps",
    "dev_subset",
    "instance_loader",
    "inverse_sqrt_factor",
    "latest_checkpoint",
    "load_recipe",
    "make_accelerator",
    "peak_lr",
    "recipe_from_dict",
    "save_checkpoint",
    "step_generator",
    "train",
    "transformer_lr",
    "transformer_schedule",
]
