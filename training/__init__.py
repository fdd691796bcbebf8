"""CLIP pretraining: model, contrastive loss, tokenizer, WebDataset loader, checkpoints, DeepSpeed+Ray trainer.

    python -m training.train --config configs/demo.yaml [training.steps=...]
"""
