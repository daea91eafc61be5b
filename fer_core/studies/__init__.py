"""Recipes of calls to the layers below that answer the project's questions in one command.

Owns: the reference study (the seed report rerun, sized to a time window) and shipping its runs
(``reference``), the prepared GPU study (``beyond``: teacher, distilled students, the reference's gaps), the
resumable CPU study of the four families (``families``), deployable ONNX variants as derived runs
(``variants``), the benchmarks (``bench``, ``train_bench``, ``serve_bench``, ``live_bench``) and the browser's
live-mode engine driven from Python (``browser_engine``). May import every package but the command line.
"""
