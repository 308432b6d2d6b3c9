"""The one reader of .tflite files: the flatbuffer schema module that ai_edge_litert
ships (schema_py_generated), with no interpreter and no private LiteRT API. The tflite
backend reads a converted model back with it (parameters, integers, ops; the tensors a
dump returns), the mcu backend translates it into the C runtime's model file.

Tensor and op indices are the file's, which are also the interpreter's tensor indices
(tensor i of subgraph 0)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import ExportError
from .plan import QParams


def _schema():
    import ai_edge_litert.schema_py_generated as S
    return S


class TfliteFile:
    """Subgraph 0 of a .tflite, with constant buffers, op names and types resolved.
    model, graph (the subgraph) and S (the schema module) are the schema's objects."""

    def __init__(self, data: bytes):
        S = _schema()
        self.S = S
        self.model = S.ModelT.InitFromPackedBuf(data, 0)
        self.graph = self.model.subgraphs[0]
        self.op_names = _names(S.BuiltinOperator)
        self.type_names = {code: name.lower() for code, name in _names(S.TensorType).items()}

    @classmethod
    def read(cls, path: str | Path) -> "TfliteFile":
        return cls(Path(path).read_bytes())

    @property
    def operators(self) -> list:
        return self.graph.operators or []

    def op_name(self, op) -> str:
        """The builtin op name, e.g. 'CONV_2D'."""
        code = self.model.operatorCodes[op.opcodeIndex]
        return self.op_names.get(max(code.builtinCode, code.deprecatedBuiltinCode), "?")

    def tensor_name(self, t: int) -> str:
        return self.graph.tensors[t].name.decode()

    def dtype(self, t: int) -> str:
        """The element type's name as numpy spells it: 'int8', 'int32', 'float32'."""
        return self.type_names.get(self.graph.tensors[t].type, "?")

    def const(self, t: int) -> np.ndarray:
        """A constant tensor's values in its own shape."""
        tensor = self.graph.tensors[t]
        data = self.model.buffers[tensor.buffer].data
        if data is None:
            raise ExportError(f"tensor '{tensor.name.decode()}' should be a constant")
        dtype = {self.S.TensorType.INT8: np.int8, self.S.TensorType.INT32: np.int32,
                 self.S.TensorType.INT64: np.int64}[tensor.type]
        return np.frombuffer(bytes(bytearray(data)), dtype).reshape(tensor.shape)

    def quant(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(scales float32, zero points int64); both empty for a float tensor."""
        q = self.graph.tensors[t].quantization
        if q is None or q.scale is None:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        return np.asarray(q.scale, np.float32), np.asarray(q.zeroPoint, np.int64)

    def qparams(self, t: int) -> QParams:
        """The 8-bit grid of tensor t."""
        return QParams(8, *self.quant(t))

    def produced(self) -> set[int]:
        """Every tensor some op writes."""
        return {int(o) for op in self.operators for o in op.outputs}


def _names(enum_class) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_")}
