"""Training: the DeepSpeed trainer (trainer.py), stage configs (config.py), checkpoints and exports
(checkpoint.py), logs (logger.py). Entry point: `python -m omniseq.train --config STAGE.yaml key=value ...`."""
