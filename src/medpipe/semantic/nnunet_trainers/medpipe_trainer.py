"""``nnUNetTrainerMedpipe``: nnU-Net's default trainer with the schedule taken from the environment.

nnU-Net builds trainers from a fixed ``__init__`` signature (it re-instantiates them for
inference), so the schedule cannot be a constructor argument; medpipe sets
``MEDPIPE_NNUNET_EPOCHS``, ``MEDPIPE_NNUNET_ITERATIONS`` and ``MEDPIPE_NNUNET_VAL_ITERATIONS``
from the study config before it builds the trainer. Unset variables keep nnU-Net's defaults, so
``nnUNetv2_train ... -tr nnUNetTrainerMedpipe`` on the command line also works.
"""

import os

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainerMedpipe(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):  # noqa: B008 - nnU-Net's exact signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("MEDPIPE_NNUNET_EPOCHS", self.num_epochs))
        self.num_iterations_per_epoch = int(os.environ.get("MEDPIPE_NNUNET_ITERATIONS", self.num_iterations_per_epoch))
        self.num_val_iterations_per_epoch = int(
            os.environ.get("MEDPIPE_NNUNET_VAL_ITERATIONS", self.num_val_iterations_per_epoch))
        # checkpoint_latest.pth every 10 epochs (nnU-Net: 50): a job cut by its time limit loses less
        self.save_every = max(1, min(10, self.num_epochs))
