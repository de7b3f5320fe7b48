"""Knowledge distillation: a frozen teacher teaches a smaller student.

Loss per token (Hinton et al., 2015; Agarwal et al., 2024 for generalized JSD):

    L = w_kl * T^2 * D(p_T || q_T) + w_ce * CE(q, data) + w_hidden * sum_pairs relMSE

- p_T = softmax(z_teacher / T), q_T = softmax(z_student / T); the T^2 factor keeps
  gradient sizes comparable across temperatures.
- D is forward KL  sum p log(p/q) (mean-seeking), reverse KL  sum q log(q/p)
  (mode-seeking), or generalized JSD(beta) = beta KL(p||m) + (1-beta) KL(q||m) with
  m = beta p + (1-beta) q.
- With top-k teacher logits (the cache, or ``top_k`` set), p is the teacher's
  softmax renormalised over its k largest logits. Forward KL then compares it
  with the student's full softmax at those k tokens (mass the student puts
  elsewhere is still penalised through log q); reverse KL and JSD need p on the
  student's support too, so there the student is also renormalised over the
  same k tokens. With k = vocabulary size all three equal the exact losses.
- Cross-tokenizer (``cross_tokenizer``, after Boizard et al. 2024, "Towards
  Cross-Tokenizer Distillation: the Universal Logit Distillation Loss"): teacher
  and student read the same text, each through its own tokenizer. A student
  position is paired with the teacher position whose token ends at the same
  character (both have then read the same text and predict what follows), and D
  is the L1 distance between their probabilities sorted in decreasing order: the
  k largest of each, plus the difference of the mass beyond them. The distance
  needs no shared vocabulary, and it is 0 when the two distributions are the same
  up to a renaming of tokens.
- Hidden-state matching: the output of student layer s is projected (a learned
  linear map when widths differ, none when equal) and compared with teacher
  layer t by mean squared error relative to the teacher's mean square (scale-free,
  since residual-stream norms grow with depth). Default pairs map student layers
  evenly onto teacher layers (last onto last).

The teacher runs in eval mode, with ``requires_grad=False`` and under
``torch.no_grad``, held in bf16 while training in bf16 (its fp32 weights are put back
afterwards); the report carries a full hash of its weights before and
after the run. Training runs on :func:`slmkit.tune.loop.train` (resumable, data
parallel under torchrun; with ``fsdp`` the student's weights, gradients and optimizer
state are sharded over the ranks, while every rank keeps the whole frozen teacher).

The package, by concern:

- ``config``: :class:`DistillConfig`, the options of a run;
- ``losses``: one small class per loss (divergences, chunk losses, hidden-state
  matching) and :class:`DistillLoss`, the loop's ``loss_fn``;
- ``align``: cross-tokenizer alignment (:func:`cross_blocks`);
- ``teacher``: loading and checking the teacher, weight hashes, the teacher cache;
- ``student``: a new student from a config, and the trained module;
- ``run``: :func:`run_distill`.
"""
from .align import CrossBlocks, cross_blocks
from .config import KD_KINDS, DistillConfig
from .losses import (DIVERGENCES, JSD, DistillLoss, ForwardKL, ReverseKL, SortedProbL1,
                     kd_divergence, make_divergence, make_loss_fn, sorted_prob_distance)
from .run import distill_batches, run_distill, train_blocks, val_ids, val_ppl
from .student import (DistillModule, build_module, check_pairs, default_layer_pairs,
                      init_student, student_config)
from .teacher import (Teacher, check_sizes, check_tokenizers, setup_teacher,
                      teacher_files_fingerprint, vocab_fingerprint, weights_hash)

__all__ = [
    "CrossBlocks", "cross_blocks", "KD_KINDS", "DistillConfig", "DIVERGENCES", "JSD",
    "DistillLoss", "ForwardKL", "ReverseKL", "SortedProbL1", "kd_divergence",
    "make_divergence", "make_loss_fn", "sorted_prob_distance", "distill_batches", "val_ids",
    "val_ppl", "run_distill", "train_blocks", "DistillModule", "build_module",
    "check_pairs", "default_layer_pairs", "init_student", "student_config", "Teacher",
    "check_sizes", "check_tokenizers", "setup_teacher", "teacher_files_fingerprint",
    "vocab_fingerprint", "weights_hash",
]
