"""Fine-tuning: the base model, the FSDP run and the Hugging Face checkpoint."""
