"""A fedsaga device written from docs/device-protocol.md alone.

It imports paho-mqtt, msgpack, zstandard, numpy and the standard library, and nothing of
fedsaga (tests/unit/test_conformance_device.py parses its imports to keep it so). Section
numbers below are the specification's. tests/integration/test_conformance.py runs it through
whole rounds with the real services: if the specification stops being enough to build a
device, that test fails.

paho runs the connection in its own thread; commands and payloads are handled in a worker
thread, and each training or deployment in a thread of its own, so the device keeps reading
commands while it trains. Two affordances exist for the tests only and are not protocol:
`hold=True` keeps a train command waiting until `release()`, and `publish_update` sends any
update the test crafts.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import queue
import struct
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import paho.mqtt.client as mqtt
import zstandard
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

Model = dict[str, np.ndarray]  # tensor name -> float32 array, in the model's order

# 1. Session
KEEPALIVE_S = 10
SESSION_EXPIRY_S = 3600
STATUS_INTERVAL_S = 60.0
QOS = 1
DEPLOY_WAIT_S = 5.0
# 8.1 Limits a receiver enforces
MAX_BLOB = 8 * 1024 * 1024
MAX_CONTENT = 64 * 1024 * 1024
MAX_ELEMENTS = 4_000_000
MAX_TENSORS = 64
PAYLOAD_KEYS = {"v", "method", "block", "base_digest", "digest", "tensors"}
TENSOR_KEYS = {"name", "shape", "q", "scales"}
BLOCK = 256
HEX = set("0123456789abcdef")


class PayloadError(ValueError):
    """A weight payload that does not decode or verify (reported as `bad_payload`)."""


# -- 3. Encoding ---------------------------------------------------------------------------


def message(kind: str, **fields: Any) -> dict[str, Any]:
    """A message with the common fields: schema_version, a fresh msg_id, ts_ms, kind."""
    return {
        "schema_version": 1,
        "msg_id": uuid.uuid4().hex,
        "ts_ms": time.time_ns() // 1_000_000,
        "kind": kind,
        **fields,
    }


def pack(msg: dict[str, Any]) -> bytes:
    """One msgpack map; bytes as bin."""
    packed: bytes = msgpack.packb(msg, use_bin_type=True)
    return packed


def unpack(data: bytes) -> dict[str, Any]:
    """A received message (a msgpack map with str keys)."""
    obj = msgpack.unpackb(data, raw=False, strict_map_key=True, max_bin_len=MAX_BLOB)
    if not isinstance(obj, dict):
        raise ValueError("a message is a map")
    return obj


# -- 9. The digest of a model --------------------------------------------------------------


def u64(n: int) -> bytes:
    """An unsigned 64-bit little-endian integer."""
    return struct.pack("<Q", n)


def digest(model: Model) -> str:
    """SHA-256 of the framing of section 9, as 64 lowercase hex characters."""
    h = hashlib.sha256(u64(len(model)))
    for name, values in model.items():
        raw = name.encode("utf-8")
        h.update(u64(len(raw)) + raw)
        shape = values.shape or (1,)  # a scalar frames as one dimension of size 1
        h.update(u64(len(shape)) + b"".join(u64(d) for d in shape))
        h.update(np.ascontiguousarray(values, dtype="<f4").tobytes())
    return h.hexdigest()


def is_digest(value: object) -> bool:
    """64 lowercase hex characters."""
    return isinstance(value, str) and len(value) == 64 and set(value) <= HEX


# -- 8. Weight payloads --------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """A decoded version 1 payload: the delta per tensor and both digests."""

    base_digest: str | None
    digest: str
    delta: Model


def _field(obj: dict[str, Any], keys: set[str], what: str) -> dict[str, Any]:
    if not isinstance(obj, dict) or set(obj) != keys:
        raise PayloadError(f"{what} must have exactly the keys {sorted(keys)}")
    return obj


def _tensor_delta(entry: dict[str, Any], method: str, block: int) -> tuple[str, np.ndarray]:
    """8.1: one tensor's delta, decoded in float32."""
    _field(entry, TENSOR_KEYS, "a tensor")
    name, shape, q, scales = entry["name"], entry["shape"], entry["q"], entry["scales"]
    if not isinstance(name, str) or not 0 < len(name) <= 128:
        raise PayloadError("bad tensor name")
    if (
        not isinstance(shape, list)
        or len(shape) > 8
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise PayloadError(f"tensor {name}: bad shape")
    if not isinstance(q, bytes) or not isinstance(scales, bytes):
        raise PayloadError(f"tensor {name}: q and scales must be bin")
    n = math.prod(shape)
    if method == "int8":
        if len(q) != n or len(scales) != 4 * -(-n // block):
            raise PayloadError(f"tensor {name}: wrong byte lengths")
        codes = np.frombuffer(q, dtype=np.int8).astype(np.float32)
        per_block = np.frombuffer(scales, dtype="<f4").astype(np.float32)
        if not np.all(np.isfinite(per_block)) or np.any(per_block < 0):
            raise PayloadError(f"tensor {name}: scales must be finite and >= 0")
        values = codes * np.repeat(per_block, block)[:n]  # float32 x float32
    else:
        if len(q) != 4 * n or scales:
            raise PayloadError(f"tensor {name}: wrong byte lengths")
        values = np.frombuffer(q, dtype="<f4").astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise PayloadError(f"tensor {name}: non-finite values")
    return name, values.reshape(shape)


def read_payload(blob: bytes) -> Payload:
    """8.3 steps 1-3: decompress, unpack, check, decode every tensor's delta."""
    if not isinstance(blob, bytes) or len(blob) > MAX_BLOB:
        raise PayloadError("blob too large")
    try:
        size = zstandard.frame_content_size(blob)
        if size < 0 or size > MAX_CONTENT:
            raise PayloadError("the zstd frame must declare a content size within the limit")
        content = zstandard.ZstdDecompressor().decompress(
            blob, max_output_size=MAX_CONTENT, allow_extra_data=False
        )
        doc = msgpack.unpackb(content, raw=False, strict_map_key=True)
    except (zstandard.ZstdError, ValueError, msgpack.UnpackException) as exc:
        raise PayloadError(f"undecodable blob: {exc}") from exc
    _field(doc, PAYLOAD_KEYS, "the payload")
    if type(doc["v"]) is not int or doc["v"] != 1:
        raise PayloadError(f"unsupported version {doc['v']!r}")
    method, block = doc["method"], doc["block"]
    if method not in ("int8", "float32"):
        raise PayloadError(f"unknown method {method!r}")
    if type(block) is not int or block < 1:
        raise PayloadError("block must be a positive int")
    if doc["base_digest"] is not None and not is_digest(doc["base_digest"]):
        raise PayloadError("base_digest must be 64 lowercase hex characters or nil")
    if not is_digest(doc["digest"]):
        raise PayloadError("digest must be 64 lowercase hex characters")
    entries = doc["tensors"]
    if not isinstance(entries, list) or len(entries) > MAX_TENSORS:
        raise PayloadError("tensors must be a list of at most 64")
    delta = dict(_tensor_delta(e, method, block) for e in entries)
    if len(delta) != len(entries):
        raise PayloadError("tensor names must be unique")
    if sum(v.size for v in delta.values()) > MAX_ELEMENTS:
        raise PayloadError("too many elements")
    return Payload(doc["base_digest"], doc["digest"], delta)


def rebuild(payload: Payload, base: Model | None) -> Model:
    """8.3 steps 4-5: base + delta in float32 (the delta alone for a full model), verified."""
    if base is None:
        rebuilt = {k: v.astype(np.float32) for k, v in payload.delta.items()}
    else:
        if [(k, v.shape) for k, v in base.items()] != [
            (k, v.shape) for k, v in payload.delta.items()
        ]:
            raise PayloadError("the delta's tensors differ from the base's")
        rebuilt = {k: np.add(base[k], payload.delta[k], dtype=np.float32) for k in base}
    if digest(rebuilt) != payload.digest:
        raise PayloadError("the rebuilt model does not match the payload's digest")
    return rebuilt


def quantize_int8(delta: np.ndarray, block: int) -> tuple[bytes, bytes, np.ndarray]:
    """8.4 step 2, int8: codes (rounded to nearest), per-block scales, and the decoded values."""
    flat = np.ascontiguousarray(delta, dtype=np.float32).ravel()
    n = flat.size
    blocks = np.zeros(-(-n // block) * block, dtype=np.float32)
    blocks[:n] = flat
    blocks = blocks.reshape(-1, block)
    scales = (np.abs(blocks).max(axis=1).astype(np.float64) / 127).astype(np.float32)
    safe = np.where(scales > 0, scales, np.float32(1.0))[:, None]
    codes = np.clip(np.rint(blocks / safe), -127, 127).astype(np.int8).ravel()[:n]
    decoded = codes.astype(np.float32) * np.repeat(scales, block)[:n]
    return codes.tobytes(), scales.astype("<f4").tobytes(), decoded.reshape(delta.shape)


def compress(doc: dict[str, Any]) -> bytes:
    """8.1: the payload map, packed, in one zstd frame that declares its content size."""
    packed = msgpack.packb(doc, use_bin_type=True)
    blob: bytes = zstandard.ZstdCompressor(write_content_size=True).compress(packed)
    return blob


def write_update(trained: Model, base: Model, base_digest: str) -> bytes:
    """8.4: the trained model as an int8 delta against `base`, with the receiver's digest."""
    tensors: list[dict[str, Any]] = []
    rebuilt: Model = {}
    for name, values in base.items():
        delta = np.subtract(trained[name], values, dtype=np.float32)
        q, scales, decoded = quantize_int8(delta, BLOCK)
        tensors.append({"name": name, "shape": list(values.shape), "q": q, "scales": scales})
        rebuilt[name] = np.add(values, decoded, dtype=np.float32)
    return compress(
        {
            "v": 1,
            "method": "int8",
            "block": BLOCK,
            "base_digest": base_digest,
            "digest": digest(rebuilt),
            "tensors": tensors,
        }
    )


# -- 10. The model: an MLP, w{i} (in, out) then b{i}; ReLU between layers ---------------------


def _layers(model: Model) -> int:
    return len(model) // 2


def logits(model: Model, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """The logits of a batch, and each layer's input (for backpropagation)."""
    h, inputs = x, []
    for i in range(_layers(model)):
        inputs.append(h)
        h = h @ model[f"w{i}"] + model[f"b{i}"]
        if i < _layers(model) - 1:
            h = np.maximum(h, 0)
    return h, inputs


def loss_and_accuracy(model: Model, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean softmax cross-entropy and accuracy."""
    z, _ = logits(model, x)
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean()), float(np.mean(z.argmax(axis=1) == y))


def accuracy(model: Model, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy on local data (the canary's health metric)."""
    return loss_and_accuracy(model, x, y)[1]


def sgd(
    model: Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    rng: np.random.Generator,
) -> Model:
    """Minibatch SGD on softmax cross-entropy; returns the trained copy."""
    w = {k: v.astype(np.float32).copy() for k, v in model.items()}
    for _ in range(epochs):
        order = rng.permutation(len(y))
        for lo in range(0, len(y), batch_size):
            batch = order[lo : lo + batch_size]
            z, inputs = logits(w, x[batch])
            p = np.exp(z - z.max(axis=1, keepdims=True))
            d = p / p.sum(axis=1, keepdims=True)
            d[np.arange(len(batch)), y[batch]] -= 1.0
            d /= len(batch)
            for i in reversed(range(len(inputs))):
                grad_w, grad_b = inputs[i].T @ d, d.sum(axis=0)
                if i > 0:
                    d = (d @ w[f"w{i}"].T) * (inputs[i] > 0)
                w[f"w{i}"] -= np.float32(lr) * grad_w.astype(np.float32)
                w[f"b{i}"] -= np.float32(lr) * grad_b.astype(np.float32)
    return w


# -- The device ------------------------------------------------------------------------------


class ConformanceDevice:
    """One device speaking the protocol over its own MQTT 5 session."""

    def __init__(
        self,
        device_id: str,
        x: np.ndarray,
        y: np.ndarray,
        *,
        host: str,
        port: int,
        password: str | None = None,
        hold: bool = False,
        seed: int = 0,
    ) -> None:
        self.device_id = device_id
        self.x, self.y = np.asarray(x, dtype=np.float32), np.asarray(y, dtype=np.int64)
        self.host, self.port, self.password = host, port, password
        self.rng = np.random.default_rng(seed)
        self.state = "idle"
        self.models: dict[str, Model] = {}  # every model held, by digest
        self.round_models: dict[str, set[str]] = {}  # round id -> digests of its train payloads
        self.serving: tuple[str, str] | None = None  # (digest, version)
        self.previous: tuple[str, str] | None = None
        self.trained: set[tuple[str, int]] = set()
        self.deployed: set[str] = set()
        self.stopped: set[str] = set()
        # What happened, for the tests to read.
        self.commands: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []
        self.updates: list[dict[str, Any]] = []
        self.sent_updates: dict[tuple[str, int], bytes] = {}  # the outbox, for retransmission
        self.rejections: list[dict[str, Any]] = []
        self.connected = threading.Event()
        self._allowed = threading.Event()
        if not hold:
            self._allowed.set()
        self._arrived = threading.Condition()
        self._inbox: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
        self._worker = threading.Thread(target=self._work, name=f"{device_id}-worker", daemon=True)
        self._client = self._make_client()

    def topic(self, leaf: str) -> str:
        """One of this device's topics (section 2)."""
        return f"fl/device/{self.device_id}/{leaf}"

    # -- 1. Session ------------------------------------------------------------------------

    def status(self, state: str | None = None) -> dict[str, Any]:
        """4.1: this device's status."""
        held = self.serving
        return message(
            "device.status",
            device_id=self.device_id,
            state=state or self.state,
            battery=1.0,
            charging=True,
            network="wifi",
            memory_mb=1024,
            num_examples=len(self.y),
            model_version=held[1] if held else None,
            model_digest=held[0] if held else None,
        )

    def _set_will(self, client: mqtt.Client) -> None:
        # A fresh msg_id for each connection: the services drop an id they have handled.
        client.will_set(self.topic("status"), pack(self.status("offline")), qos=QOS, retain=True)

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.device_id, protocol=mqtt.MQTTv5
        )
        if self.password is not None:
            client.username_pw_set(self.device_id, self.password)
        self._set_will(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        return client

    def start(self, timeout: float = 10.0) -> None:
        """Connect (clean start off, session expiry 3600 s, keepalive 10 s) and announce."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        self._worker.start()
        self._client.connect(
            self.host, self.port, keepalive=KEEPALIVE_S, clean_start=False, properties=props
        )
        self._client.loop_start()
        if not self.connected.wait(timeout):
            raise TimeoutError(f"{self.device_id}: no CONNACK within {timeout} s")

    def stop(self) -> None:
        """Leave cleanly: say so (retained), then disconnect."""
        if self.connected.is_set():
            info = self._client.publish(
                self.topic("status"), pack(self.status("offline")), qos=QOS, retain=True
            )
            with contextlib.suppress(RuntimeError):
                info.wait_for_publish(5)
        self._client.disconnect()
        self._client.loop_stop()
        self._inbox.put(None)
        self._worker.join(5)

    def _on_connect(self, client: mqtt.Client, _u: object, _f: object, rc: Any, _p: object) -> None:
        if rc.is_failure:
            return
        for leaf in ("cmd", "model", "rejected"):
            client.subscribe(self.topic(leaf), qos=QOS)
        self.publish_status()
        self.connected.set()

    def _on_disconnect(self, client: mqtt.Client, *_: object) -> None:
        self.connected.clear()
        self._set_will(client)  # used by the reconnect

    def publish_status(self) -> None:
        """4.1: the retained status, with a fresh msg_id."""
        self._client.publish(self.topic("status"), pack(self.status()), qos=QOS, retain=True)

    def _publish(self, leaf: str, msg: dict[str, Any]) -> bytes:
        data = pack(msg)
        self._client.publish(self.topic(leaf), data, qos=QOS)
        return data

    # -- Receiving -------------------------------------------------------------------------

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == self.topic("rejected"):
            with contextlib.suppress(ValueError, msgpack.UnpackException):
                self.rejections.append(unpack(msg.payload))  # 7: logged, nothing else
            return
        self._inbox.put((msg.topic, msg.payload))

    def _work(self) -> None:
        last_status = time.monotonic()
        while True:
            try:
                item = self._inbox.get(timeout=1.0)
            except queue.Empty:
                item = ("", b"")
            if item is None:
                return
            if time.monotonic() - last_status >= STATUS_INTERVAL_S and self.connected.is_set():
                self.publish_status()  # 1: at least every 60 s
                last_status = time.monotonic()
            topic, payload = item
            if not topic:
                continue
            try:
                msg = unpack(payload)
            except (ValueError, msgpack.UnpackException):
                continue
            if topic == self.topic("model"):
                self.on_model(msg)
            else:
                self.commands.append(msg)
                self.on_command(msg)

    def on_model(self, msg: dict[str, Any]) -> None:
        """4.2: rebuild, verify and keep a model; report what went wrong."""
        if msg.get("kind") != "model.payload":
            return
        round_id, iteration = msg["round_id"], msg["iteration"]
        if msg["digest"] not in self.models:
            base_digest = msg["base_digest"]
            base = self.models.get(base_digest) if base_digest is not None else None
            if base_digest is not None and base is None:
                self.report(round_id, "failed", iteration=iteration, reason="model_unavailable")
                return
            try:
                payload = read_payload(msg["blob"])
                if payload.digest != msg["digest"] or payload.base_digest != base_digest:
                    raise PayloadError("the blob's digests differ from the message's")
                rebuilt = rebuild(payload, base)
            except PayloadError:
                self.report(round_id, "failed", iteration=iteration, reason="bad_payload")
                return
            with self._arrived:
                self.models[msg["digest"]] = rebuilt
                self._arrived.notify_all()
        if msg["purpose"] == "train":
            self.round_models.setdefault(round_id, set()).add(msg["digest"])

    def _wait_for(self, model_digest: str, until: float) -> Model | None:
        with self._arrived:
            self._arrived.wait_for(
                lambda: model_digest in self.models, timeout=max(0.0, until - time.time())
            )
            return self.models.get(model_digest)

    def on_command(self, cmd: dict[str, Any]) -> None:
        """4.3-4.6: one command, handled idempotently."""
        kind, round_id = cmd.get("kind"), cmd.get("round_id", "")
        if kind == "cmd.train":
            key = (round_id, cmd["iteration"])
            if key not in self.trained:
                self.trained.add(key)
                self._spawn(lambda: self.train(cmd))
        elif kind == "cmd.deploy":
            if cmd["digest"] not in self.deployed:
                self.deployed.add(cmd["digest"])
                self._spawn(lambda: self.deploy(cmd))
        elif kind == "cmd.stop":
            self.stopped.add(round_id)
            self.state = "idle"
            self.report(round_id, "stopped", reason=cmd["reason"])
        elif kind == "cmd.revoke":
            self.stopped.add(round_id)
            self.state = "idle"
            serving = {self.serving[0] if self.serving else None}
            with self._arrived:
                for d in self.round_models.pop(round_id, set()) - serving:
                    self.models.pop(d, None)
            self.report(round_id, "revoked", reason=cmd["reason"])
        elif kind == "cmd.rollback":
            if self.serving is not None and self.serving[1] == cmd["version"]:
                self.serving, self.previous = self.previous, None
                self.publish_status()
            self.report(round_id, "rolled_back", version=cmd["version"])

    def _spawn(self, work: Callable[[], None]) -> None:
        threading.Thread(target=work, name=f"{self.device_id}-job", daemon=True).start()

    # -- Work --------------------------------------------------------------------------------

    def report(self, round_id: str, status: str, **fields: Any) -> None:
        """4.8: a report (progress, failure, health)."""
        msg = message(
            "device.report",
            round_id=round_id,
            device_id=self.device_id,
            iteration=fields.pop("iteration", 0),
            status=status,
            reason=fields.pop("reason", None),
            version=fields.pop("version", None),
            metrics=fields.pop("metrics", {}),
        )
        self.reports.append(msg)
        self._publish("report", msg)

    def train(self, cmd: dict[str, Any]) -> None:
        """5 steps 3-4: wait for the model, train, send one update before the deadline."""
        round_id, iteration = cmd["round_id"], cmd["iteration"]
        until = cmd["deadline_ms"] / 1000
        base = self._wait_for(cmd["model_digest"], until)
        if base is None:
            self.report(round_id, "failed", iteration=iteration, reason="model_unavailable")
            return
        self._allowed.wait(max(0.0, until - time.time()))
        if round_id in self.stopped:
            return
        self.state = "training"
        self.report(round_id, "training", iteration=iteration)
        trained = sgd(
            base,
            self.x,
            self.y,
            epochs=cmd["epochs"],
            batch_size=cmd["batch_size"],
            lr=cmd["learning_rate"],
            rng=self.rng,
        )
        loss, acc = loss_and_accuracy(trained, self.x, self.y)
        self.state = "idle"
        if round_id in self.stopped:
            return
        self.publish_update(
            round_id,
            iteration,
            cmd["model_digest"],
            write_update(trained, base, cmd["model_digest"]),
            train_loss=loss,
            train_accuracy=acc,
        )

    def publish_update(
        self,
        round_id: str,
        iteration: int,
        base_digest: str,
        blob: bytes,
        *,
        train_loss: float = 0.0,
        train_accuracy: float = 0.0,
    ) -> dict[str, Any]:
        """4.7: send an update, kept in the outbox for a retransmission."""
        msg = message(
            "device.update",
            round_id=round_id,
            iteration=iteration,
            device_id=self.device_id,
            base_digest=base_digest,
            num_examples=len(self.y),
            train_loss=train_loss,
            train_accuracy=train_accuracy,
            blob=blob,
        )
        self.updates.append(msg)
        self.sent_updates[(round_id, iteration)] = self._publish("update", msg)
        return msg

    def retransmit_update(self, round_id: str, iteration: int) -> None:
        """3: send an update again from the outbox: the same msg_id, the same bytes."""
        self._client.publish(
            self.topic("update"), self.sent_updates[(round_id, iteration)], qos=QOS
        )

    def release(self) -> None:
        """Let held train commands go on (tests only)."""
        self._allowed.set()

    def deploy(self, cmd: dict[str, Any]) -> None:
        """5 step 6: measure, switch (keeping the old model), measure, announce, report."""
        round_id, version = cmd["round_id"], cmd["version"]
        new = self._wait_for(cmd["digest"], time.time() + DEPLOY_WAIT_S)
        if new is None:
            self.report(round_id, "deploy_failed", version=version, reason="model_unavailable")
            return
        before = accuracy(self.models[self.serving[0]], self.x, self.y) if self.serving else 0.0
        if self.serving is None or self.serving[0] != cmd["digest"]:
            self.previous = self.serving
        self.serving = (cmd["digest"], version)
        after = accuracy(new, self.x, self.y)
        self.publish_status()
        self.report(
            round_id,
            "deployed",
            version=version,
            metrics={"accuracy": after, "previous_accuracy": before},
        )
