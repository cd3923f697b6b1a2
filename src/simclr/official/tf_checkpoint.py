"""Read a TensorFlow checkpoint (the V2 "tensor bundle": PREFIX.index + PREFIX.data-SSSSS-of-NNNNN) without
TensorFlow.

The index is a LevelDB-style table (blocks of prefix-compressed key/value entries, an index block, a 48-byte
footer) mapping each tensor's name to a BundleEntryProto (dtype, shape, shard, offset, size); the data files
hold the raw little-endian bytes. The official SimCLR checkpoints (tf.train.Checkpoint files and the
variables/ folder of its SavedModels) are bundles of whole, unpartitioned float tensors, which is what this
reader accepts; anything else is a one-line ``TFCheckpointError``.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from simclr.checkpoint import CheckpointError

__all__ = ["TFCheckpointError", "checkpoint_prefix", "object_paths", "read_tf_checkpoint"]

_MAGIC = 0xDB4775248B80FB57
# tensorflow/core/framework/types.proto: the dtypes a model's variables have
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 6: np.int8, 9: np.int64, 10: np.bool_, 19: np.float16}
_DT_STRING = 7


class TFCheckpointError(CheckpointError):
    """A file that is not a readable TensorFlow checkpoint (one line)."""


def checkpoint_prefix(path: str | Path) -> Path:
    """The bundle prefix that ``path`` names: a prefix itself (``dir/ckpt-1``), its .index file, a folder
    with a ``checkpoint`` file (tf.train.CheckpointManager's: the latest one) or a SavedModel folder
    (``variables/variables``)."""
    p = Path(path)
    if p.suffix == ".index" and p.is_file():
        return p.with_suffix("")
    if p.is_dir():
        if (p / "variables" / "variables.index").is_file():
            return p / "variables" / "variables"
        if (p / "variables.index").is_file():
            return p / "variables"
        state = p / "checkpoint"
        if state.is_file():
            for line in state.read_text(errors="replace").splitlines():
                if line.startswith("model_checkpoint_path:"):
                    name = line.split(":", 1)[1].strip().strip('"')
                    target = Path(name) if os.path.isabs(name) else p / name
                    if Path(str(target) + ".index").is_file():
                        return target
                    # a folder copied from elsewhere keeps the absolute path of its old place
                    if Path(str(p / Path(name).name) + ".index").is_file():
                        return p / Path(name).name
                    raise TFCheckpointError(f"{state} names the checkpoint {name!r}, whose .index is not in {path}; "
                                            "give the prefix of the one to convert (e.g. DIR/ckpt-N)")
        found = sorted(p.glob("*.index"), key=lambda f: f.stat().st_mtime)
        if found:
            return found[-1].with_suffix("")
        raise TFCheckpointError(f"{path} holds no TensorFlow checkpoint (no *.index file, no SavedModel variables/)")
    if Path(str(p) + ".index").is_file():
        return p
    raise TFCheckpointError(f"no TensorFlow checkpoint at {path} (expected PREFIX.index, a checkpoint folder or a SavedModel)")


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise TFCheckpointError("truncated varint")
        b = buf[pos]
        result |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TFCheckpointError("bad varint")


def _fields(buf: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) of a serialized protobuf message: ints for varint/fixed fields, bytes for
    length-delimited ones."""
    out, pos = [], 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            val, pos = _varint(buf, pos)
        elif wire == 1:
            val, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            val, pos = bytes(buf[pos:pos + n]), pos + n
        elif wire == 5:
            val, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        else:
            raise TFCheckpointError(f"unsupported protobuf wire type {wire}")
        out.append((field, val))
    if pos != len(buf):
        raise TFCheckpointError("truncated protobuf message")
    return out


def _masked_crc(data) -> int:
    """TensorFlow's masked CRC32C (tensorflow/core/lib/hash/crc32c.h): rotated right by 15 bits, plus a constant."""
    import google_crc32c

    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _block(data: bytes, handle: bytes | memoryview, what: str) -> bytes:
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + 5 > len(data):
        raise TFCheckpointError(f"the index is truncated (its {what} lies past the end of the file)")
    kind = data[offset + size]
    # the trailer's checksum covers the block and its type byte: a damaged index stops here, not as wrong weights
    if _masked_crc(data[offset:offset + size + 1]) != int.from_bytes(data[offset + size + 1:offset + size + 5], "little"):
        raise TFCheckpointError(f"the index's {what} at byte {offset} fails its checksum (a damaged or partial file)")
    if kind != 0:
        raise TFCheckpointError(f"the index's {what} is compressed (type {kind}), which this reader does not support")
    return data[offset:offset + size]


def _entries(block: bytes) -> list[tuple[bytes, bytes]]:
    """The key/value pairs of one table block (keys are stored as a shared prefix length + the rest)."""
    if len(block) < 4:
        raise TFCheckpointError("a block of the index is too short")
    n_restarts = int.from_bytes(block[-4:], "little")
    end = len(block) - 4 - 4 * n_restarts
    if end < 0:
        raise TFCheckpointError("a block of the index is damaged")
    out, pos, key = [], 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        if shared > len(key) or pos + unshared + vlen > end:
            raise TFCheckpointError("a block of the index is damaged")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        out.append((key, block[pos:pos + vlen]))
        pos += vlen
    return out


def _index(prefix: Path) -> dict[bytes, bytes]:
    path = Path(str(prefix) + ".index")
    data = path.read_bytes()
    if len(data) < 48 or int.from_bytes(data[-8:], "little") != _MAGIC:
        raise TFCheckpointError(f"{path} is not a TensorFlow checkpoint index (no table footer)")
    footer = data[-48:-8]
    _, pos = _varint(footer, 0)  # the metaindex handle (offset, size): unused
    _, pos = _varint(footer, pos)
    index_block = _block(data, footer[pos:], "index block")
    return {k: v for _, handle in _entries(index_block) for k, v in _entries(_block(data, handle, "data block"))}


def _entry_location(prefix: Path, f: dict, num_shards: int) -> tuple[np.memmap, int, int]:
    shard, offset, size = int(f.get(3, 0)), int(f.get(4, 0)), int(f.get(5, 0))
    data = Path(f"{prefix}.data-{shard:05d}-of-{num_shards:05d}")
    if not data.is_file():
        raise TFCheckpointError(f"{data.name} is missing beside {prefix.name}.index")
    try:
        if offset + size > data.stat().st_size:
            raise TFCheckpointError(f"{data.name} is shorter than its index says (truncated download?)")
        raw = np.memmap(data, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    except OSError as e:
        raise TFCheckpointError(f"cannot read {data}: {e.strerror or e}") from None
    return raw, offset, size


# Keras tracks every variable a second time through these lists; paths through them say nothing of the layer.
_ALIASES = {"variables", "trainable_variables", "non_trainable_variables", "weights", "trainable_weights",
            "non_trainable_weights", "keras_api", "_self_tracked_trackables"}


def object_paths(path: str | Path, per_object: int = 16) -> dict[str, list[str]]:
    """For an object-based checkpoint (tf.train.Checkpoint, SavedModel variables): each variable's checkpoint key
    -> the paths of attribute names that reach it from the saved root (at most ``per_object``, shortest first),
    not going through Keras' alias lists (``variables``, ``keras_api``, ...).

    A variable reachable along several paths is stored once, under one of them (a SavedModel of tf2/run.py
    keeps its trainable variables under ``trainable_variables_list/<i>``); the other paths say what it is.
    Name-based (TF1) checkpoints have no object graph: {}.
    """
    prefix = checkpoint_prefix(path)
    entries = _read_index(prefix)
    header = dict(_fields(entries.get(b"", b"")))
    value = entries.get(b"_CHECKPOINTABLE_OBJECT_GRAPH")
    if value is None:
        return {}
    f = dict(_fields(value))
    raw, offset, size = _entry_location(prefix, f, int(header.get(1, 1)))
    buf = raw[offset:offset + size].tobytes()
    n, pos = _varint(buf, 0)  # a scalar string: its length, a 4-byte checksum of the lengths, the bytes
    graph = buf[pos + 4:pos + 4 + n]
    nodes = [dict(children=[], keys=[]) for _ in range(sum(1 for k, _ in _fields(graph) if k == 1))]
    for i, node in enumerate(v for k, v in _fields(graph) if k == 1):
        for fld, val in _fields(node):
            if fld == 1:
                ref = dict(_fields(val))
                nodes[i]["children"].append((int(ref.get(1, 0)), ref.get(2, b"").decode("utf-8", "replace")))
            elif fld == 2:
                key = dict(_fields(val)).get(3, b"").decode("utf-8", "replace")
                nodes[i]["keys"].append(key)
    paths: list[list[str]] = [[] for _ in nodes]
    if not nodes:
        return {}
    paths[0].append("")
    queue = [(0, "")]
    while queue:  # breadth first: shortest paths first, each node's count capped
        nxt = []
        for node, p in queue:
            for child, name in nodes[node]["children"]:
                if name not in _ALIASES and 0 <= child < len(nodes) and len(paths[child]) < per_object:
                    cp = f"{p}/{name}" if p else name
                    paths[child].append(cp)
                    nxt.append((child, cp))
        queue = nxt
    return {key: paths[i] for i, node in enumerate(nodes) for key in node["keys"]}


def _read_index(prefix: Path) -> dict[bytes, bytes]:
    try:
        return _index(prefix)
    except OSError as e:
        raise TFCheckpointError(f"cannot read {prefix}.index: {e.strerror or e}") from None
    except TFCheckpointError as e:
        raise TFCheckpointError(f"{prefix}.index: {e}") from None


def read_tf_checkpoint(path: str | Path, keep=None) -> dict[str, np.ndarray]:
    """Every numeric tensor of the checkpoint that ``path`` names (see ``checkpoint_prefix``), by its name in the
    checkpoint (for object-based checkpoints, e.g. ``model/resnet_model/.../kernel/.ATTRIBUTES/VARIABLE_VALUE``).
    String tensors (the object graph, the checkpoint's own bookkeeping) are left out, and so is every name for
    which ``keep(name)`` (when given) is false: optimizer slots of a training checkpoint need not be read."""
    prefix = checkpoint_prefix(path)
    entries = _read_index(prefix)
    header = dict(_fields(entries.pop(b"", b"")))
    num_shards = int(header.get(1, 1))
    if header.get(2, 0) != 0:
        raise TFCheckpointError(f"{prefix} was written big-endian, which this reader does not support")
    out: dict[str, np.ndarray] = {}
    for key, value in entries.items():
        f = dict(_fields(value))
        dtype = int(f.get(1, 0))
        if dtype == _DT_STRING:
            continue
        name = key.decode("utf-8", "replace")
        if keep is not None and not keep(name):
            continue
        if 7 in f:
            raise TFCheckpointError(f"{prefix}: {name} is partitioned into slices, which this reader does not support")
        if dtype not in _DTYPES:
            raise TFCheckpointError(f"{prefix}: {name} has dtype {dtype}, which this reader does not support")
        shape = [int(v) for fld, dim in _fields(f.get(2, b"")) if fld == 2 for k, v in _fields(dim) if k == 1]
        raw, offset, size = _entry_location(prefix, f, num_shards)
        itemsize = np.dtype(_DTYPES[dtype]).itemsize
        if size != int(np.prod(shape, dtype=np.int64)) * itemsize:
            raise TFCheckpointError(f"{prefix}: {name} does not fit its data file (truncated download?)")
        if 6 in f and _masked_crc(raw[offset:offset + size]) != int(f[6]):
            raise TFCheckpointError(f"{prefix}: {name} fails its checksum (a damaged data file; download it again)")
        little = np.dtype(_DTYPES[dtype]).newbyteorder("<")
        out[name] = np.frombuffer(raw, dtype=little, count=size // itemsize, offset=offset).reshape(shape) \
            .astype(_DTYPES[dtype], copy=True)  # a copy: the file's pages are not kept mapped
    return out
