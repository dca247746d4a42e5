"""Files on disk: model directories, run directories and checkpoints, PNG metadata."""
