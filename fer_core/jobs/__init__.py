"""Trainings that outlive the page that started them: one plan, two executors.

Owns: a job (a queue of trainings, one config file each) written to disk and run by a detached process
(``queue``), its items (``items``), and the Ray backend that runs the same items as Ray tasks and streams
their metrics and checkpoints back into the local store (``ray_backend``, the one module that imports ray,
and only when a job asks for it). May import analysis, serving, training, the store, models, data and common.
"""
