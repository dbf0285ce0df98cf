"""Finetuning SAM with the objective of Alg. 1 (reference-code choices: docs/fidelity.md).

Modules (a run's knobs and presets live below the stages, in ``medpipe.run_settings``): ``data``
(samples from the corpus), ``objective`` (losses and one interactive iteration), ``sem_decoder`` (the
joint semantic decoder), ``distributed`` (gradient averaging under torchrun), ``trainer`` (the loop), ``command`` (the
``medpipe finetune`` subcommand).
"""
