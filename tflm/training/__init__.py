"""Training a run: `train()` (`train.py`, what `python -m tflm.train` runs) sets up the run and
hands its task to the Controller (`controller.py`: the loop of steps, evaluations, history and
checkpoints, and every way a run stops), which drives the Trainer (`trainer.py`: the compiled
training and evaluation steps of any task; with the model cut into pipeline stages, the plan is
`pipeline.py` and the steps `pipeline_trainer.py`). Around them: the tf.distribute strategy, a lost peer
and leaving a cluster (`strategy.py`), this process's place in a cluster from TF_CONFIG, or
TF_CONFIG built for a Slurm job (`cluster.py`), meeting the other workers before TensorFlow starts
(`rendezvous.py`), the workers `python -m tflm.launch` starts on localhost (`launcher.py`), the
optimizer (`optimizer.py`) and the lines a run prints (`progress.py`). Importing this package
loads no TensorFlow.
"""
