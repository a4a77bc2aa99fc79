"""What every part of the runner stands on: checkpoints (orbax), logs, signals, atomic files, the user-error
base class, safe unpickling and the import of reference-code checkpoints. Nothing here imports the runner."""
