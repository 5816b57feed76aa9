"""Deployment: ONNX export of mmvolo segmentors (:mod:`.onnx_export`).

Nothing here is imported by ``import mmvolo``; ``tools/deploy/`` holds the command lines.
"""
