"""How trials run: one worker loop (`worker.py`), launched on Ray (`ray.py`) or by hand."""
