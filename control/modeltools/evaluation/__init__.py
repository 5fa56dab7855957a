"""Accuracy of a face model by the WIDER FACE protocol (`facestream model eval`).

Apart from the serving code and free of Redis: ground-truth readers (widerface.py, landmarks.py),
the official matching and average precision (protocol.py), the landmarks' normalised mean error
(landmarks.py), and a runner that decodes and detects exactly as a detector does (runner.py).
"""
