"""nnU-Net v2 models in autoseg: translate a trained nnU-Net results folder (plans, dataset.json,
weights-only checkpoints) into an autoseg model that the fused predictor runs with nnU-Net's own
preprocessing and resampling (``autoseg import_nnunet``). Nothing here imports nnU-Net."""
