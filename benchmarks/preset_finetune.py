"""A pretrained KerasHub preset fine-tuned, adapted with LoRA, and the same architecture from scratch:
validation accuracy of text classifiers at equal steps (model.preset, train.lora_rank).

Offline, so the "published checkpoint" is made here:
1. Build a GPT-2 preset with random weights and a byte-level BPE vocabulary of a few merges
   (tests/tiny_presets.py), 4 blocks of width 128: the architecture "from scratch".
2. Pretrain it as a language model with tflm on the embedded manual (`model.preset` = that
   preset) and save the result as a KerasHub preset (`save_to_preset`): the "pretrained" preset.
3. Train three classifiers on the manual-topics set (tflm.data.labelled.write_manual_topics) with
   the same seed and steps: the pretrained preset fine-tuned whole, the pretrained preset with LoRA
   (only the adapters and the classifier head train), and the scratch preset fine-tuned whole.
   Print validation accuracy at every evaluation, then what each trained and its checkpoint's size.

    python benchmarks/preset_finetune.py [--pretrain-steps 1500] [--steps 200] [--root DIR]
"""

import argparse
import glob
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from machine import cpu_line  # noqa: E402
from tflm.config import load_config  # noqa: E402
from tflm.data.labelled import write_manual_topics  # noqa: E402
from tflm.runs import run_dir as runs  # noqa: E402
from tflm.training.train import train  # noqa: E402
from tiny_presets import gpt2_preset  # noqa: E402  (the tests' offline preset builder)

LEARNING_RATES = {"fine-tuned": 0.001, "LoRA": 0.01, "from scratch": 0.001}


def pretrained_preset(root, steps):
    """(the scratch preset, the same preset pretrained on the manual as a language model)."""
    import keras_hub

    from tflm.serving.loading import load_run

    scratch = gpt2_preset(os.path.join(root, "scratch_preset"), layers=4, width=128, max_positions=256)
    settings = [f"model.preset={scratch}", "data.seq_len=128", "train.global_batch_size=16", f"train.steps={steps}",
                f"train.eval_every={max(1, steps // 4)}", "train.eval_batches=4", "train.warmup_steps=20",
                "train.learning_rate=0.002"]
    run_dir = train(load_config(None, settings), os.path.join(root, "pretraining"))
    causal_lm = keras_hub.models.CausalLM.from_preset(scratch)
    causal_lm.backbone.set_weights(load_run(run_dir).model.backbone.get_weights())
    pretrained = os.path.join(root, "pretrained_preset")
    causal_lm.save_to_preset(pretrained)
    return scratch, pretrained, run_dir


def classifiers(root, scratch, pretrained, steps, eval_every, lora_rank):
    """{name: run directory} of the three classifiers on the manual-topics set."""
    train_csv, validation_csv = write_manual_topics(os.path.join(root, "manual_topics"))
    common = ["task.type=classify", "task.pooling=mean", "task.class_weights=balanced", "data.source=files",
              f"data.paths={train_csv}", f"data.validation_paths={validation_csv}", "data.seq_len=128",
              "train.global_batch_size=16", f"train.steps={steps}", f"train.eval_every={eval_every}",
              "train.warmup_steps=10"]
    plans = {"fine-tuned": [f"model.preset={pretrained}"],
             "LoRA": [f"model.preset={pretrained}", f"train.lora_rank={lora_rank}"],
             "from scratch": [f"model.preset={scratch}"]}
    return {name: train(load_config(None, common + plan + [f"train.learning_rate={LEARNING_RATES[name]}"]),
                        os.path.join(root, name.replace(" ", "_")))
            for name, plan in plans.items()}


def checkpoint_megabytes(run_dir):
    """MB of the run's newest checkpoint."""
    newest = sorted(glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.index")),
                    key=lambda p: int(p.rsplit("-", 1)[1].split(".")[0]))[-1][:-len(".index")]
    return sum(os.path.getsize(p) for p in glob.glob(newest + ".*")) / 1e6


def trained_weights(run_dir):
    """How many weights the run's steps update."""
    from tflm.serving.loading import load_run

    return sum(int(v.shape.num_elements()) for v in load_run(run_dir).model.trainable_variables)


def main():
    """Run the comparison and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrain-steps", type=int, default=1500)
    parser.add_argument("--steps", type=int, default=200, help="classifier steps, every run")
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--root", help="where the presets and runs go (default: a temporary directory)")
    args = parser.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="tflm-preset-")
    print(cpu_line())
    scratch, pretrained, lm_run = pretrained_preset(root, args.pretrain_steps)
    runs_by_name = classifiers(root, scratch, pretrained, args.steps, args.eval_every, args.lora_rank)
    lm = runs.read_history(lm_run)[-1]
    print(f"\npretrained preset: GPT-2, 4 blocks of width 128, {args.pretrain_steps} LM steps on the manual, "
          f"val_loss {lm['val_loss']:.3f} nats/token ({pretrained})")
    names = list(runs_by_name)
    print(f"{'step':>6}  " + "  ".join(f"{name + ' val_acc':>22}" for name in names))
    histories = [runs.read_history(runs_by_name[name]) for name in names]
    for records in zip(*histories):
        print(f"{records[0]['step']:>6}  " + "  ".join(f"{r['val_accuracy']:>22.3f}" for r in records))
    print(f"\n{'run':>14}  {'final val_acc':>13}  {'val macro-F1':>12}  {'trained weights':>15}  {'checkpoint MB':>13}")
    for name, history in zip(names, histories):
        print(f"{name:>14}  {history[-1]['val_accuracy']:>13.3f}  {history[-1]['val_macro_f1']:>12.3f}  "
              f"{trained_weights(runs_by_name[name]):>15,}  {checkpoint_megabytes(runs_by_name[name]):>13.2f}")


if __name__ == "__main__":
    main()
