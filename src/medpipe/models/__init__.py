"""Every network of the study, in one place: stages import models; models import no stage.

- ``names``, ``specs``: model types, checkpoint labels and the study's model list (torch-free);
- ``sam``: SAM builders (ViT-b/l/h and the tiny test model) and strict checkpoint loading;
- ``transforms``: SAM's input transform (intensity scaling, resize, pad, pixel normalisation);
- ``sem_decoder``: the joint semantic decoder (e_sem) trained with Alg. 1;
- ``sam_unetr``, ``ma_sam``, ``swin_unetr``, ``posemb``: the semantic segmentation networks;
- ``device``: where a job's model runs.
"""
