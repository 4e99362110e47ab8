"""Build extra engines for a fashsdk bundle (training-side tools; the runtime never imports this).

``python -m engines int8 --bundle B --data D`` adds a calibrated int8 model for ONNX Runtime
CPU; GPU engines (``fp16``, ``tensorrt``) come from ``engines.gpu_cli``. Every engine is
gated against the fp32 model on real catalog images and registered in the bundle's
manifest (file checksum, precision, how it was made, how accurate and how fast it was).
"""
