"""The one trainer (accelerate) and what it needs: data order, EMA, checkpoint state."""
