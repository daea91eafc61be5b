"""What the Compare page and the report show, as plain functions over the runs table.

Owns: the runs as a DataFrame, Pareto frontiers, the matched-budget gap, the deployable-variants table and the
two-run card (``compare``); the Plotly figures the dashboard and the report's PNGs share (``figures``, the
only module that imports plotly, and only when a figure is drawn); sweep planning by budget or width
(``planning``); which data and device the defaults use (``status``). May import serving, training, the store,
models, data and common.
"""
