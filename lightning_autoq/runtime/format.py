"""The exported file: safetensors with packed low-bit weights and a JSON graph.

One ``.safetensors`` file holds every tensor; its header metadata holds the graph as JSON
under ``"lightning_autoq"``. A weight tensor of ``b``-bit codes is stored as ``b`` bits per
code (two's complement, little-endian bit order, padded to a byte), so a 2-bit layer costs
about 2 bits per weight on disk. Loading parses JSON and raw integers only: no pickle, no
code from the file runs, and a graph that does not validate is rejected.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from lightning_autoq.runtime.atomic import atomic_path
from lightning_autoq.runtime.program import FORMAT_VERSION, IntegerProgram, Node

METADATA_KEY = "lightning_autoq"
_INT_DTYPES = {"int8": torch.int8, "int16": torch.int16, "int32": torch.int32, "int64": torch.int64}


def pack_codes(codes: Tensor, bits: int) -> Tensor:
    """``bits``-bit two's-complement codes -> a uint8 tensor of ``ceil(n * bits / 8)`` bytes."""
    if not 1 <= bits <= 16:
        raise ValueError(f"bits={bits} is not allowed; allowed: 1..16")
    flat = codes.reshape(-1).to(torch.int64) & ((1 << bits) - 1)
    planes = (flat.unsqueeze(1) >> torch.arange(bits)) & 1
    stream = planes.reshape(-1)
    stream = torch.cat([stream, stream.new_zeros((-stream.numel()) % 8)])
    weights = torch.tensor([1 << i for i in range(8)], dtype=torch.int64)
    return (stream.reshape(-1, 8) * weights).sum(dim=1).to(torch.uint8)


def unpack_codes(packed: Tensor, bits: int, shape: list[int]) -> Tensor:
    """The inverse of :func:`pack_codes` (int8 for up to 8 bits, else int16)."""
    count = math.prod(shape)
    if packed.numel() != math.ceil(count * bits / 8):
        raise ValueError(
            f"packed weight holds {packed.numel()} bytes, {shape} x {bits} bits needs "
            f"{math.ceil(count * bits / 8)}"
        )
    stream = (packed.to(torch.int64).unsqueeze(1) >> torch.arange(8)) & 1
    planes = stream.reshape(-1)[: count * bits].reshape(count, bits)
    values = (planes << torch.arange(bits)).sum(dim=1)
    values = values - ((values >> (bits - 1)) & 1) * (1 << bits)  # sign extension
    return values.reshape(shape).to(torch.int8 if bits <= 8 else torch.int16)


def save(program: IntegerProgram, path: str | os.PathLike[str]) -> Path:
    """Write ``program`` to ``path`` atomically (a temporary file, then a rename)."""
    program.validate()
    path = Path(path)
    tensors: dict[str, Tensor] = {}
    weights: dict[str, dict[str, Any]] = {}
    for name, tensor in program.tensors.items():
        bits = program.weight_bits.get(name)
        if bits is not None:
            tensors[name] = pack_codes(tensor, bits)
            weights[name] = {"bits": bits, "shape": list(tensor.shape)}
        else:
            tensors[name] = tensor.contiguous()
    graph = {
        "format_version": FORMAT_VERSION,
        "nodes": [node.to_json() for node in program.nodes],
        "packed": weights,
        "input": {
            "name": program.input_name,
            "range": list(program.input_range),
            "exponent": program.input_exponent,
            "multiplier": program.input_multiplier,
        },
        "output": {"name": program.output_name, "exponent": program.output_exponent},
        "report": program.report,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(graph)})
    return path


def load(path: str | os.PathLike[str]) -> IntegerProgram:
    """Read a file written by :func:`save`; reject anything that does not validate.

    Raises:
        ValueError: not a safetensors file, no lightning_autoq graph, an unknown format
            version, or a graph that fails :meth:`IntegerProgram.validate`.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            raw = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError) as err:
        raise ValueError(f"{path} is not a readable safetensors file: {err}") from err
    if METADATA_KEY not in metadata:
        raise ValueError(f"{path} holds no lightning_autoq integer graph")
    try:
        graph = json.loads(metadata[METADATA_KEY])
        return _program_from(graph, raw)
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: malformed integer graph ({type(err).__name__}: {err})") from err


def _program_from(graph: dict[str, Any], raw: dict[str, Tensor]) -> IntegerProgram:
    if graph.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"format_version={graph.get('format_version')!r} is not supported; "
            f"allowed: {FORMAT_VERSION}"
        )
    tensors: dict[str, Tensor] = {}
    weight_bits: dict[str, int] = {}
    for name, tensor in raw.items():
        spec = graph["packed"].get(name)
        if spec is None:
            if tensor.dtype not in _INT_DTYPES.values():
                raise ValueError(f"tensor {name!r} has dtype {tensor.dtype}; integers only")
            tensors[name] = tensor
            continue
        bits, shape = int(spec["bits"]), [int(s) for s in spec["shape"]]
        if tensor.dtype != torch.uint8 or not 1 <= bits <= 16:
            raise ValueError(f"packed tensor {name!r}: dtype {tensor.dtype}, bits {bits}")
        tensors[name] = unpack_codes(tensor, bits, shape)
        weight_bits[name] = bits
    nodes = []
    for item in graph["nodes"]:
        attrs = {k: v for k, v in item.items() if k not in ("op", "inputs", "output")}
        nodes.append(
            Node(str(item["op"]), tuple(str(i) for i in item["inputs"]), str(item["output"]), attrs)
        )
    program = IntegerProgram(
        nodes=nodes,
        tensors=tensors,
        input_name=str(graph["input"]["name"]),
        input_range=(int(graph["input"]["range"][0]), int(graph["input"]["range"][1])),
        input_exponent=int(graph["input"]["exponent"]),
        output_name=str(graph["output"]["name"]),
        output_exponent=int(graph["output"]["exponent"]),
        weight_bits=weight_bits,
        report=list(graph.get("report", [])),
        input_multiplier=_positive_int(graph["input"].get("multiplier", 1), "input multiplier"),
    )
    program.validate()
    return program


def _positive_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what}={value!r} is not allowed; allowed: an integer >= 1")
    return value


def packed_size_bytes(program: IntegerProgram) -> dict[str, int]:
    """Theoretical sizes: packed weight bits / 8, and the biases (int32)."""
    weight_bits = sum(
        program.tensors[name].numel() * bits for name, bits in program.weight_bits.items()
    )
    others = sum(
        t.numel() * t.element_size()
        for name, t in program.tensors.items()
        if name not in program.weight_bits
    )
    return {"weights": math.ceil(weight_bits / 8), "other": others}


__all__ = ["METADATA_KEY", "load", "pack_codes", "packed_size_bytes", "save", "unpack_codes"]
