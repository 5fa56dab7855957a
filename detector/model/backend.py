"""The runtime seam: an onnxruntime session behind `InferenceBackend`.

Pre/post-processing never touch onnxruntime, so another runtime (TensorRT, Triton) can stand
in without changing the model code.
"""

from __future__ import annotations

from importlib import metadata
from typing import Literal, Protocol

import numpy as np
import onnxruntime as ort

ProviderChoice = Literal["auto", "cpu", "cuda"]
BindingChoice = Literal["auto", "on", "off"]


class InferenceBackend(Protocol):
    provider: str

    def run(self, batch: np.ndarray) -> list[np.ndarray]: ...


class ProviderError(RuntimeError):
    pass


def installed_runtime_builds() -> list[str]:
    """Which onnxruntime distributions are installed; more than one means a clobbered module."""
    found = []
    for dist in ("onnxruntime", "onnxruntime-gpu"):
        try:
            metadata.version(dist)
            found.append(dist)
        except metadata.PackageNotFoundError:
            pass
    return found


def choose_providers(choice: ProviderChoice) -> list[str]:
    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    if choice == "cuda" and not cuda:
        raise ProviderError(
            "FACESTREAM_PROVIDERS=cuda but this onnxruntime has no CUDAExecutionProvider "
            f"(available: {available}); install onnxruntime-gpu as the README's GPU section says"
        )
    if choice == "cpu" or not cuda:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


class OrtBackend:
    def __init__(
        self,
        model: bytes,
        providers: ProviderChoice = "auto",
        intra_op_threads: int = 0,
        io_binding: BindingChoice = "auto",
        spinning: bool = False,
    ) -> None:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if intra_op_threads:
            options.intra_op_num_threads = intra_op_threads
        # A detector process runs one session; inter-op parallelism only adds thread churn.
        options.inter_op_num_threads = 1
        # Spinning intra-op threads poll for the next op instead of sleeping: on a machine
        # the gateway, Redis and other detectors share, that burns the cores they need
        # (2 threads: 43 ms of CPU per 18 ms run spinning, 22 ms not; docs/performance.md).
        options.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if spinning else "0"
        )
        wanted = choose_providers(providers)
        try:
            self._session = ort.InferenceSession(model, sess_options=options, providers=wanted)
        except Exception:
            if wanted[0] != "CUDAExecutionProvider" or providers == "cuda":
                raise
            # CUDA libraries present in the wheel but not usable on this host: fall back.
            self._session = ort.InferenceSession(
                model, sess_options=options, providers=["CPUExecutionProvider"]
            )
        self.provider = self._session.get_providers()[0]
        self.input_name = self._session.get_inputs()[0].name
        self.input_shape = list(self._session.get_inputs()[0].shape)
        self.output_names = [o.name for o in self._session.get_outputs()]
        on_gpu = self.provider == "CUDAExecutionProvider"
        # IO binding: the batch is copied to the device once into a buffer onnxruntime owns,
        # and the outputs are bound to host memory, so the run does no per-call allocation
        # and copy-back of its own. It pays on a GPU; on the CPU it is the same work.
        self.io_binding = io_binding == "on" or (io_binding == "auto" and on_gpu)
        self._device = "cuda" if on_gpu else "cpu"

    def run(self, batch: np.ndarray) -> list[np.ndarray]:
        if self.io_binding:
            return self._run_bound(batch)
        outputs = self._session.run(self.output_names, {self.input_name: batch})
        return [np.asarray(o) for o in outputs]

    def _run_bound(self, batch: np.ndarray) -> list[np.ndarray]:
        binding = self._session.io_binding()
        value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(batch), self._device, 0)
        binding.bind_ortvalue_input(self.input_name, value)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self._session.run_with_iobinding(binding)
        return [np.asarray(o) for o in binding.copy_outputs_to_cpu()]
