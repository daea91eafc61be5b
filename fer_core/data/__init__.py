"""FER2013 in every form people have it, and the faces the models read.

Owns: finding and loading the data (``sources``: ``$FER_DATA``, ``--data``, ``data/``, else synthetic; parsed
once and cached), the readers for each format (``formats``), ``FerData`` and its checks (``dataset``), images
from users as gray uint8 (``images``), the procedurally drawn synthetic faces (``synthetic``), and batched
on-device augmentation and normalisation (``augment``). May import only :mod:`fer_core.common` (and numpy,
torch, pandas, Pillow, OpenCV).
"""
