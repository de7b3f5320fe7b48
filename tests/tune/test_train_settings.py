"""The loop's settings are declared once (TrainSettings) and reach the loop unchanged
from the configs of the steps that train."""
import pytest

from slmkit.compress.distill import DistillConfig
from slmkit.tune.config import TrainConfig, TrainSettings
from slmkit.tune.finetune import FinetuneConfig, _train_cfg

# a value other than the default for every shared setting
OTHER = {"device": "cpu", "lr": 1e-3, "warmup_steps": 3, "schedule": "linear",
         "min_lr_ratio": 0.5, "weight_decay": 0.1, "batch_size": 2,
         "grad_accum": 3, "max_grad_norm": 0.5, "bf16": False, "bf16_base": False,
         "grad_checkpointing": True, "compile": False, "blocked_attention": False,
         "shuffle": False, "eval_every": 4, "eval_at_start": False, "ckpt_every": 6,
         "log_every": 2, "threads": 1, "seed": 7}


def test_other_covers_every_shared_setting():
    assert set(OTHER) == set(TrainSettings.model_fields)
    assert all(TrainSettings.model_fields[k].default != v for k, v in OTHER.items())
    assert set(TrainConfig.model_fields) == set(TrainSettings.model_fields) | {
        "max_steps", "adam_betas", "parallel"}


def test_distill_hands_every_setting_to_the_loop():
    cfg = DistillConfig(teacher="t", data="d", fsdp=True, **OTHER)
    loop = cfg.train_config(9, parallel="fsdp")
    assert {k: getattr(loop, k) for k in OTHER} == OTHER
    assert loop.max_steps == 9 and loop.parallel == "fsdp"


def test_finetune_hands_every_setting_to_the_loop_and_derives_three():
    cfg = FinetuneConfig(data="d", method="full", **OTHER)
    loop = _train_cfg(cfg, 40)
    assert {k: getattr(loop, k) for k in OTHER} == OTHER
    assert loop.max_steps == 40 and loop.parallel == "ddp"
    # unset, the learning rate follows the method, warm-up is at most a quarter of the
    # run, evals come about 8 times and checkpoints every max(eval_every, 25) steps
    loop = _train_cfg(FinetuneConfig(data="d", method="full", warmup_steps=30), 40)
    assert (loop.lr, loop.warmup_steps, loop.eval_every, loop.ckpt_every) == (3e-5, 10, 5, 25)


def test_a_bad_shared_setting_names_its_field():
    with pytest.raises(ValueError, match="batch_size"):
        DistillConfig(teacher="t", data="d", batch_size=0)
    with pytest.raises(ValueError, match="max_steps"):
        FinetuneConfig(data="d", max_steps=5)          # the run's length is the step's to derive
