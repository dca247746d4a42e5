"""Networks by family, each with a loss object the trainer drives."""
