"""Semantic segmentation per dataset (docs/fidelity.md): SAM-UNETR 2D, MA-SAM-style 3D, nnU-Net v2, Swin UNETR.

Every method trains on the train split of a dataset store, selects on val and reports Dice per
class on test, so the methods are compared on exactly the same cases.
"""

METHODS = ("sam_unetr", "ma_sam", "nnunet", "swin_unetr")
