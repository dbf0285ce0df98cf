"""nnU-Net trainer classes of medpipe.

This folder is what ``nnUNet_extTrainer`` points at: nnU-Net imports every module here as a
top-level module when it looks a trainer up by name (for example when ``nnUNetPredictor`` loads a
trained model), so the modules must import nothing from medpipe.
"""
