"""Offline model tooling behind `facestream model`: what MAKES a model a detector can serve
(the int8 quantisation, the DamoFD fetch and its PyTorch export, the WIDER FACE evaluation).

It needs extras a detector image does not carry (torch, onnxruntime's quantiser, the sample
photos, scipy) and a detector imports none of it (import-linter's contracts in
pyproject.toml); what a detector needs to LOAD what this makes stays in detector/model/.
"""
