"""Fine-tuned from a pretrained language model vs trained from scratch: validation accuracy at equal steps.

1. Pretrain a character LSTM on the embedded corpus (the Python reference manual in CPython).
2. Build a labelled set offline: paragraphs of four manual topics, labelled with their topic
   (tflm.data.labelled.write_manual_topics; every 5th paragraph of each topic is validation).
3. Train two classifiers with the same config, seed and steps: one `--init-from` the pretrained
   run, one from random weights. Print both validation accuracies at every evaluation.

    python benchmarks/finetune_vs_scratch.py [--pretrain-steps 600] [--steps 200] [--root DIR]
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tflm.runs import run_dir as runs  # noqa: E402
from tflm.config import load_config  # noqa: E402
from tflm.data.labelled import write_manual_topics  # noqa: E402
from tflm.training.train import train  # noqa: E402

MODEL = ["model.type=lstm", "model.embed_dim=64", "model.num_layers=1", "model.lstm_units=128",
         "runtime.jit_compile=false"]  # XLA runs this LSTM's time loop slower on CPU


def pretrain(root, steps, overrides=()):
    """A character LSTM trained on the embedded manual; returns its run directory."""
    settings = MODEL + ["data.seq_len=128", "train.global_batch_size=32", f"train.steps={steps}",
                        f"train.eval_every={max(1, steps // 4)}", "train.eval_batches=4", "train.warmup_steps=20",
                        "train.learning_rate=0.005", *overrides]
    return train(load_config(None, settings), os.path.join(root, "pretrained"))


def finetune_and_scratch(root, pretrained, steps, eval_every, overrides=()):
    """The two classifier runs (fine-tuned, from scratch) on the manual-topics set: (dir, dir)."""
    train_csv, validation_csv = write_manual_topics(os.path.join(root, "manual_topics"))
    settings = MODEL + ["task.type=classify", "task.pooling=mean", "task.class_weights=balanced",
                        "data.source=files", f"data.paths={train_csv}", f"data.validation_paths={validation_csv}",
                        "data.seq_len=128", "train.global_batch_size=32", f"train.steps={steps}",
                        f"train.eval_every={eval_every}", "train.warmup_steps=10", "train.learning_rate=0.003",
                        *overrides]
    finetuned = train(load_config(None, settings + [f"train.init_from={pretrained}"]), os.path.join(root, "finetuned"))
    scratch = train(load_config(None, settings), os.path.join(root, "scratch"))
    return finetuned, scratch


def main():
    """Run the comparison and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=600)
    parser.add_argument("--steps", type=int, default=200, help="classifier steps, both runs")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--root", help="where the runs go (default: a temporary directory)")
    args = parser.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="tflm-finetune-")
    pretrained = pretrain(root, args.pretrain_steps)
    finetuned, scratch = finetune_and_scratch(root, pretrained, args.steps, args.eval_every)
    lm = runs.read_history(pretrained)[-1]
    print(f"\npretrained LM: {args.pretrain_steps} steps, val_loss {lm['val_loss']:.3f} nats/char")
    print(f"labelled set: {root}/manual_topics (4 topics of the manual)")
    print(f"{'step':>6}  {'fine-tuned val_acc':>18}  {'from scratch val_acc':>20}  {'fine-tuned val_F1':>17}  "
          f"{'scratch val_F1':>14}")
    for a, b in zip(runs.read_history(finetuned), runs.read_history(scratch)):
        print(f"{a['step']:>6}  {a['val_accuracy']:>18.3f}  {b['val_accuracy']:>20.3f}  {a['val_macro_f1']:>17.3f}  "
              f"{b['val_macro_f1']:>14.3f}")


if __name__ == "__main__":
    main()
