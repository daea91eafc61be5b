"""Faces in, expressions out: what the Try-it page, ``predict`` and the live video run.

Owns: finding faces and cropping them (``inference``), every selected model on every face with its
milliseconds (``inference.predict``), the live frame path with tracking and smoothing (``live``), models
ready to serve and the runtime that computes them (``models``), what the browser's live mode is sent and sends
back (``browser``), and ONNX: BatchNorm folding, export, fp16 and int8 files, ONNX Runtime sessions and parity
checks (``onnx``, the one module that imports onnx and onnxruntime). May import training (evaluation), the
store, models, data and common.
"""
