"""Fine-tuning PaDT: settings, the training objective, atomic checkpoints and the accelerate loop."""
