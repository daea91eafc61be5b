"""Recipes of calls to the layers below that answer the project's questions in one command.

Owns: the reference study (the seed report rerun, sized to a time window) and shipping its runs
(``reference``), the prepared GPU study (``beyond``: teacher, distilled students, the reference's gaps),
deployable ONNX variants as derived runs (``variants``), and the benchmark (``bench``). May import every
package but the command line.
"""
