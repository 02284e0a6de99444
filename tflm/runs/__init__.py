"""What a run leaves on disk and who may write it: the run directory and its ledger
(`run_dir.py`: config, history, reservation of a new directory, moving an old one aside), its lock
(`lock.py`: which process trains it), its checkpoints (`checkpoint.py`), starting a new run from
another one's weights (`init_from.py`), the check that its tokenizer files are the ones it was
trained with (`fingerprints.py`), curves drawn from its history (`plot.py`), and a pipeline
run's trace of its stages' work (`pipeline_trace.py`, drawn by `pipeline_plot.py`). Nothing here
overwrites, truncates or shares a run directory without an explicit flag. Importing this package
loads no TensorFlow.
"""
