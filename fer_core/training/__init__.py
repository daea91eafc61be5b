"""Training: one ``RunConfig`` in, a finished run in the results store out.

Owns: the config and its recipes (``config``: every field, its validation, the flags made from it), the
training step and what it is made of (``engine``: augmentation on the device, mixup/cutmix, distillation,
optimizers, schedule, EMA, the CUDA-graph step), evaluation on a split (``evaluation``), where a run comes from
(``lineage``: teachers, init run, pruned parent), structured pruning to a parameter budget (``pruning``, with
Torch-Pruning, imported only by runs that prune), quantization-aware fine-tuning of a trained network for its int8
file (``qat``), and ``fit`` in named phases with checkpoints and resume
(``trainer``). May import the store, models, data and common; never
serving, analysis, jobs, studies, Ray or any UI library (it runs on a GPU machine that has none of them).
"""
