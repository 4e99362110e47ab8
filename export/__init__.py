"""Training side of fashsdk: ADDE models, training, ONNX export into bundles. Needs torch.

Run from the repository root: ``python -m export train|onnx|demo``.
"""
