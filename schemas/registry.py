"""Schema registry: the Avro contracts of commands and events, as this project needs them.

Schemas live as one file per version, ``avro/<kind>s/<Name>.v<N>.avsc``. This module loads them
all at once, generates a pydantic model per schema version, validates, encodes and decodes, and
runs the upcasters. Which bytes a record carries is the Confluent wire format (magic byte 0, the
4-byte schema id of a Confluent-compatible schema registry, the Avro body), so any Kafka tool can
read the store. The ids come from an :class:`IdSource` attached by :func:`schemas.wire.bind` at
process start and are cached here: framing and parsing the 5-byte prefix costs a dict lookup,
not a registry call. Reading an id that is not cached asks the source once.

Records written before the wire format (schemaless Avro, the writer's version in the
``agentstream.schema_version`` header) stay readable: that header marks them.

Compatibility between versions is judged by the schema registry (``schemas.wire``); ``check``
here is only an offline smoke test through fastavro's own schema resolution.

Message metadata (ids, tenant, versions, timestamps) travels in Kafka headers handled
elsewhere; the records here hold only the domain payload.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Protocol, Union

import fastavro
from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, create_model

from .errors import SchemaDecodeError, SchemaLoadError, SchemaNotBound, SchemaValidationError, UnknownSchema
from .upcasters import UPCASTERS, Upcasters

__all__ = [
    "SCHEMA_HEADER",
    "VERSION_HEADER",
    "SCHEMA_ROOT",
    "Kind",
    "SchemaVersion",
    "CompatibilityProblem",
    "SchemaRegistry",
    "IdSource",
    "MAGIC_BYTE",
    "subject_of",
    "schema_text",
]

SCHEMA_HEADER = "agentstream.schema"
"""Kafka header carrying the schema name (utf-8)."""
VERSION_HEADER = "agentstream.schema_version"
"""Kafka header of the old format: the writer schema version as a decimal string (utf-8).

Records in the Confluent wire format do not carry it (the id names the version); a record that
carries it is schemaless Avro written before the wire format."""
MAGIC_BYTE = 0
"""First byte of a record in the Confluent wire format; the 4-byte big-endian schema id follows."""
SCHEMA_ROOT: Path = Path(__file__).resolve().parent / "avro"
"""Directory holding the ``commands/`` and ``events/`` .avsc files."""

Kind = Literal["command", "event"]
_KIND_BY_DIR: dict[str, Kind] = {"commands": "command", "events": "event"}
_KIND_BY_NAMESPACE: dict[str, Kind] = {"agentstream.commands": "command", "agentstream.events": "event"}
_FILENAME = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_NAMED = {"record", "error", "enum", "fixed"}
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class SchemaVersion:
    """One version of one schema, as loaded from ``path``.

    ``schema`` is the fastavro-parsed schema (usable with fastavro readers/writers);
    ``raw`` is the JSON exactly as written in the file.
    """

    name: str
    version: int
    kind: Kind
    path: Path
    schema: dict = field(repr=False, compare=False)
    raw: dict = field(repr=False, compare=False)


@dataclass(frozen=True)
class CompatibilityProblem:
    """``reader_version`` of schema ``name`` cannot read data written with ``writer_version``."""

    name: str
    reader_version: int
    writer_version: int
    reason: str

    def __str__(self) -> str:
        return f"{self.name} v{self.reader_version} cannot read v{self.writer_version}: {self.reason}"


class IdSource(Protocol):
    """Where schema ids come from: a Confluent-compatible schema registry (``schemas.wire``).

    Both calls may block (network); :class:`SchemaRegistry` caches what they return.
    """

    def id_for(self, sv: SchemaVersion) -> int:
        """The registry id of ``sv`` under its subject (registering it if the source may)."""
        ...

    def schema_for(self, schema_id: int) -> str:
        """The schema text the registry holds for ``schema_id``; UnknownSchema when it has none."""
        ...


def subject_of(name_or_version: "SchemaVersion | dict") -> str:
    """The registry subject of a schema: its record's full name (``RecordNameStrategy``).

    Several event types share a topic, so subjects follow the record, not the topic.
    """
    raw = name_or_version.raw if isinstance(name_or_version, SchemaVersion) else name_or_version
    return _fullname(raw["name"], _namespace(raw))


def schema_text(sv: SchemaVersion) -> str:
    """The one text of ``sv`` that is registered (compact JSON of the file, docs and ``version`` kept).

    Registries give ids by schema text, so every process registers exactly this text.
    """
    return json.dumps(sv.raw, separators=(",", ":"), ensure_ascii=False)


class SchemaRegistry:
    """All schema versions found under one root directory, plus pydantic models for them.

    Build it with :meth:`load`. Instances are read-only after loading (models are
    generated lazily and cached).
    """

    #: Semantic migrations applied by :meth:`decode` to records written with an older version
    #: (see :mod:`schemas.upcasters`); assign another :class:`Upcasters` on an instance to override.
    upcasters: Upcasters = UPCASTERS

    def __init__(self, versions: Iterable[SchemaVersion]) -> None:
        by_name: dict[str, list[SchemaVersion]] = {}
        for sv in versions:
            by_name.setdefault(sv.name, []).append(sv)
        self._by_name = {n: sorted(vs, key=lambda s: s.version) for n, vs in sorted(by_name.items())}
        self._models: dict[tuple[str, int], type[BaseModel]] = {}
        self._source: IdSource | None = None
        #: (name, version) -> the 5-byte wire prefix (magic byte + id); id -> writer schema.
        self._prefixes: dict[tuple[str, int], bytes] = {}
        self._writers: dict[int, SchemaVersion] = {}
        #: The registry URL the ids come from, and whether every schema was registered and its
        #: id cached at bind time (``schemas.wire.bind`` sets both).
        self.bound_to: str | None = None
        self.bound_eagerly = False
        #: What ``encode`` writes: ``"confluent"`` (the wire format) or ``"headers"`` (the format
        #: before it, for a rolling upgrade whose readers are not all upgraded yet; see
        #: ``Settings.wire_format``). Readers read both whatever this says.
        self.write_format: Literal["confluent", "headers"] = "confluent"

    # ------------------------------------------------------------------ loading
    @classmethod
    def load(cls, root: Path = SCHEMA_ROOT) -> "SchemaRegistry":
        """Parse every ``*.avsc`` under ``root`` with fastavro.

        Raises :class:`SchemaLoadError` on unreadable or invalid JSON, an invalid Avro
        schema, a filename not shaped ``<Name>.v<N>.avsc``, a record name or ``version``
        attribute that disagrees with the filename, a kind that cannot be determined,
        or a duplicate (name, version).
        """
        root = Path(root)
        if not root.is_dir():
            raise SchemaLoadError(root, "schema root is not a directory")
        loaded: dict[tuple[str, int], SchemaVersion] = {}
        kinds: dict[str, Kind] = {}
        for path in sorted(root.rglob("*.avsc")):
            sv = _load_file(path)
            if (sv.name, sv.version) in loaded:
                other = loaded[(sv.name, sv.version)].path
                raise SchemaLoadError(path, f"duplicate {sv.name} v{sv.version} (also in {other})")
            if kinds.setdefault(sv.name, sv.kind) != sv.kind:
                raise SchemaLoadError(path, f"{sv.name} is both a command and an event")
            loaded[(sv.name, sv.version)] = sv
        return cls(loaded.values())

    # ------------------------------------------------------------------ lookup
    def names(self, kind: str | None = None) -> list[str]:
        """Sorted schema names, optionally only those of ``kind`` ("command" or "event")."""
        return [n for n, vs in self._by_name.items() if kind is None or vs[0].kind == kind]

    def versions(self, name: str) -> list[SchemaVersion]:
        """All versions of ``name``, ascending. Raises :class:`UnknownSchema` if there are none."""
        try:
            return list(self._by_name[name])
        except KeyError:
            raise UnknownSchema(name) from None

    def get(self, name: str, version: int | None = None) -> SchemaVersion:
        """Version ``version`` of ``name`` (``None`` = latest). Raises :class:`UnknownSchema`."""
        vs = self.versions(name)
        if version is None:
            return vs[-1]
        for sv in vs:
            if sv.version == version:
                return sv
        raise UnknownSchema(name, version)

    def latest_version(self, name: str) -> int:
        """The highest version number of ``name``."""
        return self.get(name).version

    def kind(self, name: str) -> str:
        """``"command"`` or ``"event"``. Raises :class:`UnknownSchema`."""
        return self.get(name).kind

    # ------------------------------------------------------------------ models
    def model(self, name: str, version: int | None = None) -> type[BaseModel]:
        """Pydantic model of ``name`` (latest version unless ``version`` is given), cached.

        The model forbids extra fields; Avro types map to str/int/float/bool/bytes,
        list/dict, ``Literal`` for enums, ``Optional`` for null unions and ``datetime``
        for timestamp logical types; Avro defaults become field defaults and Avro
        ``doc`` becomes the description. Scalars are strict (no "1" -> 1 coercion).
        """
        sv = self.get(name, version)
        key = (sv.name, sv.version)
        if key not in self._models:
            self._models[key] = _build_model(sv)
        return self._models[key]

    def validate(self, name: str, data: Mapping[str, Any] | BaseModel, version: int | None = None) -> BaseModel:
        """Validate ``data`` against ``name`` (latest version unless ``version``) and return a model instance.

        Raises :class:`SchemaValidationError` listing every problem as ``"field: message"``,
        or :class:`UnknownSchema`.
        """
        model = self.model(name, version)
        if isinstance(data, model):
            return data
        if isinstance(data, BaseModel):
            data = data.model_dump()
        if not isinstance(data, Mapping):
            raise SchemaValidationError(name, [f"<root>: expected a mapping or model, got {type(data).__name__}"])
        try:
            return model.model_validate(dict(data))
        except ValidationError as exc:
            raise SchemaValidationError(name, _problems(exc)) from None

    # ------------------------------------------------------------------ schema ids
    def attach(self, source: IdSource, bound_to: str) -> None:
        """Take schema ids from ``source`` from now on (``schemas.wire.bind`` calls it).

        Cached ids stay when ``bound_to`` names the same registry; another registry starts afresh.
        """
        if bound_to != self.bound_to:
            self._prefixes.clear()
            self._writers.clear()
        self._source, self.bound_to = source, bound_to

    def remember(self, name: str, version: int, schema_id: int) -> None:
        """Cache the id of ``name`` v``version`` (what a registration returned), so encode never asks."""
        sv = self.get(name, version)
        self._prefixes[(sv.name, sv.version)] = bytes([MAGIC_BYTE]) + schema_id.to_bytes(4, "big")
        self._writers[schema_id] = sv

    def schema_id(self, name: str, version: int | None = None) -> int:
        """The registry id of ``name`` (latest version unless ``version``), cached after the first ask.

        Raises :class:`SchemaNotBound` when no source is attached, :class:`UnknownSchema` for an
        unknown schema; a source may raise ``SchemaRegistryUnavailable``.
        """
        sv = self.get(name, version)
        prefix = self._prefixes.get((sv.name, sv.version))
        if prefix is None:
            prefix = self._prefix(sv)
        return int.from_bytes(prefix[1:5], "big")

    def _prefix(self, sv: SchemaVersion) -> bytes:
        if self._source is None:
            raise SchemaNotBound(sv.name)
        schema_id = self._source.id_for(sv)
        prefix = bytes([MAGIC_BYTE]) + schema_id.to_bytes(4, "big")
        self._prefixes[(sv.name, sv.version)] = prefix
        self._writers[schema_id] = sv
        return prefix

    def writer(self, schema_id: int) -> SchemaVersion:
        """The schema that id ``schema_id`` names, cached; the local file when it is one of ours.

        An id whose schema is not among the files (written by a newer producer, say) is read
        with the registry's schema as writer and resolved to the newest local version. Raises
        :class:`UnknownSchema` when neither the cache nor the source knows the id.
        """
        found = self._writers.get(schema_id)
        if found is not None:
            return found
        if self._source is None:
            raise UnknownSchema(None, detail=f"schema id {schema_id} is not cached and no schema registry is bound (schemas.wire.bind)")
        text = self._source.schema_for(schema_id)
        try:
            raw = json.loads(text)
            name = raw["name"].rsplit(".", 1)[-1]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise UnknownSchema(None, detail=f"schema id {schema_id} is not an Avro record schema") from None
        local = {schema_text(sv): sv for sv in self._by_name.get(name, [])}
        sv = local.get(json.dumps(raw, separators=(",", ":"), ensure_ascii=False))
        if sv is None:
            kind = self.get(name).kind  # UnknownSchema when the record is not ours at all
            try:
                parsed = fastavro.parse_schema(raw, named_schemas={})
            except Exception as exc:
                raise UnknownSchema(name, detail=f"schema id {schema_id} is not a valid Avro schema: {exc}") from None
            version = raw.get("version") if isinstance(raw.get("version"), int) else 0
            sv = SchemaVersion(name=name, version=version, kind=kind, path=Path(f"<schema id {schema_id}>"), schema=parsed, raw=raw)
        self._writers[schema_id] = sv
        return sv

    # ------------------------------------------------------------------ wire format
    def encode(
        self, name: str, data: Mapping[str, Any] | BaseModel, version: int | None = None
    ) -> tuple[bytes, list[tuple[str, bytes]]]:
        """Validate ``data`` and encode it in the Confluent wire format with ``version`` (default latest).

        Returns ``(value, headers)``: ``value`` is magic byte 0, the 4-byte schema id, the Avro
        body; headers are ``[(SCHEMA_HEADER, name)]`` (utf-8), so a reader can route by type
        without decoding. With :attr:`write_format` ``"headers"``, ``value`` is the bare Avro body
        and a ``VERSION_HEADER`` is added (the format before). Raises :class:`SchemaValidationError`,
        :class:`UnknownSchema` or :class:`SchemaNotBound` (no registry bound).
        """
        sv = self.get(name, version)
        instance = self.validate(name, data, sv.version)
        prefix, headers = self._framing(sv)
        buf = io.BytesIO()
        buf.write(prefix)
        try:
            fastavro.schemaless_writer(buf, sv.schema, instance.model_dump())
        except Exception as exc:  # validated already; anything left is a value Avro cannot hold
            raise SchemaValidationError(name, [f"<avro>: {exc}"]) from None
        return buf.getvalue(), headers

    def encode_record(self, name: str, record: Mapping[str, Any]) -> tuple[bytes, list[tuple[str, bytes]]]:
        """``encode`` for a record the code built itself (a decider's event), without the model round trip.

        fastavro still refuses a value of the wrong type and fills a missing field's default;
        the bytes are those ``encode`` writes (a unit test holds them equal). Raises
        :class:`SchemaValidationError`, :class:`UnknownSchema` or :class:`SchemaNotBound`.
        """
        sv = self.get(name)
        prefix, headers = self._framing(sv)
        buf = io.BytesIO()
        buf.write(prefix)
        try:
            fastavro.schemaless_writer(buf, sv.schema, record)
        except Exception as exc:
            raise SchemaValidationError(name, [f"<avro>: {type(exc).__name__}: {exc}"]) from None
        return buf.getvalue(), headers

    def _framing(self, sv: SchemaVersion) -> tuple[bytes, list[tuple[str, bytes]]]:
        """(prefix of the body, headers) of a record of ``sv`` in :attr:`write_format`."""
        if self.write_format == "headers":
            return b"", [(SCHEMA_HEADER, sv.name.encode()), (VERSION_HEADER, str(sv.version).encode())]
        return self._prefixes.get((sv.name, sv.version)) or self._prefix(sv), [(SCHEMA_HEADER, sv.name.encode())]

    def decode(
        self, value: bytes, headers: Iterable[tuple[str | bytes, bytes | None]] | Mapping[str, bytes] | None
    ) -> tuple[str, BaseModel]:
        """Decode a record, read as the latest version of its schema.

        The writer schema is the one the record's id names (Confluent wire format), or, for a
        record of the old format, the version its ``VERSION_HEADER`` names. An older writer
        version is brought to the latest shape by Avro schema resolution, or, when an upcaster
        chain starts at that version (:attr:`upcasters`), by reading the record with the writer
        schema and applying the chain (then resolution for any remaining additive versions)
        before validating with the latest model.

        Returns ``(name, model instance of the latest version)``. Raises only
        :class:`UnknownSchema` (unknown id, missing or malformed schema headers of an old record)
        or :class:`SchemaDecodeError` (garbage bytes, trailing bytes, unresolvable data); an
        uncached id with the registry down raises ``SchemaRegistryUnavailable`` after waiting.
        """
        writer, name, record, _ = self._read(value, headers)
        return name, self._model_of(writer, record)

    def decode_record(
        self, value: bytes, headers: Iterable[tuple[str | bytes, bytes | None]] | Mapping[str, bytes] | None
    ) -> tuple[str, dict[str, Any]]:
        """``decode`` as a plain dict (equal to ``decode(...)[1].model_dump()``), for the hot paths.

        Avro resolution already gives the latest version's shape and types, so no model is built;
        a record an upcaster made is still validated by the model. Raises what ``decode`` raises.
        """
        writer, name, record, upcast = self._read(value, headers)
        if upcast:
            return name, self._model_of(writer, record).model_dump()
        return name, record

    def _read(
        self, value: bytes, headers: Iterable[tuple[str | bytes, bytes | None]] | Mapping[str, bytes] | None
    ) -> tuple[SchemaVersion, str, dict[str, Any], bool]:
        """(writer, name, the record in the latest version's shape, whether an upcaster made it)."""
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise SchemaDecodeError("<record>", None, f"value must be bytes, got {type(value).__name__}")
        data = bytes(value)
        found = _header_values(headers)
        if VERSION_HEADER in found:
            name, version = _old_format_schema(found)
            return self._read_body(self.get(name, version), data, 0)
        if len(data) < 5 or data[0] != MAGIC_BYTE:
            raise UnknownSchema(None, detail=_UNFRAMED)
        schema_id = int.from_bytes(data[1:5], "big")
        writer = self._writers.get(schema_id) or self.writer(schema_id)
        named = found.get(SCHEMA_HEADER)
        if named is not None and named != writer.name.encode():
            raise SchemaDecodeError(writer.name, writer.version, f"schema id {schema_id} is {writer.name}, but the {SCHEMA_HEADER!r} header says {_text(named)}")
        return self._read_body(writer, data, 5)

    def _model_of(self, writer: SchemaVersion, record: dict[str, Any]) -> BaseModel:
        try:
            return self.model(writer.name).model_validate(record)
        except ValidationError as exc:
            raise SchemaDecodeError(writer.name, writer.version, "decoded record is invalid: " + "; ".join(_problems(exc))) from None
        except Exception as exc:
            raise SchemaDecodeError(writer.name, writer.version, f"{type(exc).__name__}: {exc}") from None

    def _read_body(self, writer: SchemaVersion, data: bytes, offset: int) -> tuple[SchemaVersion, str, dict[str, Any], bool]:
        """Read the Avro body at ``offset`` of ``data`` written with ``writer`` as the latest version."""
        name, version = writer.name, writer.version
        reader = self.get(name)
        buf = io.BytesIO(data)
        buf.seek(offset)
        # A semantic change needs the writer-shaped record: resolution would drop the old field.
        upcasting = writer.version < reader.version and self.upcasters.has(name, writer.version)
        try:
            record = fastavro.schemaless_reader(buf, writer.schema, None if upcasting else reader.schema)
        except Exception as exc:
            raise SchemaDecodeError(name, version, f"{type(exc).__name__}: {exc}") from None
        if buf.tell() != len(data):
            raise SchemaDecodeError(name, version, f"{len(data) - buf.tell()} trailing bytes after the record")
        if upcasting:
            record = self._upcast(name, writer.version, reader, record)
        if not isinstance(record, dict):
            raise SchemaDecodeError(name, version, f"decoded record is a {type(record).__name__}, not a record")
        return writer, name, record, upcasting

    def writer_of(self, value: bytes, headers: Iterable[tuple[str | bytes, bytes | None]] | Mapping[str, bytes] | None) -> tuple[SchemaVersion, int | None]:
        """(writer schema, schema id or None for the old format) of a record, without decoding its body."""
        found = _header_values(headers)
        if VERSION_HEADER in found:
            return self.get(*_old_format_schema(found)), None
        data = bytes(value or b"")
        if len(data) < 5 or data[0] != MAGIC_BYTE:
            raise UnknownSchema(None, detail=_UNFRAMED)
        schema_id = int.from_bytes(data[1:5], "big")
        return self.writer(schema_id), schema_id

    def _upcast(self, name: str, writer_version: int, reader: SchemaVersion, record: dict) -> dict:
        """Upcast a writer-shaped record to ``reader``'s shape (upcasters, then Avro resolution for the rest)."""
        try:
            reached, record = self.upcasters.apply(name, writer_version, record, reader.version)
            if reached < reader.version:  # additive steps left: let Avro resolution do them
                mid = self.get(name, reached)
                out = io.BytesIO()
                fastavro.schemaless_writer(out, mid.schema, self.model(name, reached).model_validate(record).model_dump())
                out.seek(0)
                record = fastavro.schemaless_reader(out, mid.schema, reader.schema)
        except ValidationError as exc:
            raise SchemaDecodeError(name, writer_version, "upcast record is invalid: " + "; ".join(_problems(exc))) from None
        except Exception as exc:
            raise SchemaDecodeError(name, writer_version, f"upcasting failed: {type(exc).__name__}: {exc}") from None
        return record

    # ------------------------------------------------------------------ compatibility
    def check(self) -> list[CompatibilityProblem]:
        """An offline smoke check that every newer version reads data of every older version.

        For each pair (older writer, newer reader) it writes sample records exercising every
        field of the writer (unions once with values, once with nulls) and reads them as the
        reader through fastavro's schema resolution, then validates the result with the reader's
        model. The judge of compatibility is the schema registry (``schemas.wire.check`` and
        every registration); this catches the common mistakes before a registry is at hand.
        Empty list = compatible.
        """
        problems: list[CompatibilityProblem] = []
        for name, vs in self._by_name.items():
            for i, writer in enumerate(vs):
                for reader in vs[i + 1 :]:
                    reasons = self._dynamic_problems(writer, reader)
                    seen: set[str] = set()
                    for reason in reasons:
                        if reason not in seen:
                            seen.add(reason)
                            problems.append(CompatibilityProblem(name, reader.version, writer.version, reason))
        return problems

    def _dynamic_problems(self, writer: SchemaVersion, reader: SchemaVersion) -> list[str]:
        problems: list[str] = []
        names = _named_types(writer.raw, _namespace(writer.raw))
        for prefer_null in (False, True):
            sample = _sample(writer.raw, names, _namespace(writer.raw), prefer_null, set())
            try:
                buf = io.BytesIO()
                fastavro.schemaless_writer(buf, writer.schema, sample)
                buf.seek(0)
                record = fastavro.schemaless_reader(buf, writer.schema, reader.schema)
            except Exception as exc:
                problems.append(f"sample written with v{writer.version} is unreadable: {type(exc).__name__}: {exc}")
                continue
            try:
                self.model(reader.name, reader.version).model_validate(record)
            except ValidationError as exc:
                problems.append("sample read back is invalid: " + "; ".join(_problems(exc)))
        return problems


# ====================================================================== loading helpers
def _load_file(path: Path) -> SchemaVersion:
    m = _FILENAME.match(path.name)
    if not m:
        raise SchemaLoadError(path, "filename must be <Name>.v<N>.avsc")
    fname, fversion = m["name"], int(m["version"])
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaLoadError(path, f"not readable JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("type") != "record":
        raise SchemaLoadError(path, "top level must be an Avro record")
    if raw.get("name") != fname:
        raise SchemaLoadError(path, f"record name {raw.get('name')!r} does not match filename name {fname!r}")
    version = raw.get("version")
    if type(version) is not int or version != fversion:
        raise SchemaLoadError(path, f"version attribute {version!r} does not match filename version {fversion}")
    kind = _KIND_BY_DIR.get(path.parent.name) or _KIND_BY_NAMESPACE.get(str(raw.get("namespace", "")))
    if kind is None:
        raise SchemaLoadError(path, "cannot tell command from event: put it under commands/ or events/")
    try:
        parsed = fastavro.parse_schema(raw, named_schemas={})
    except Exception as exc:
        raise SchemaLoadError(path, f"invalid Avro schema: {exc}") from None
    return SchemaVersion(name=fname, version=fversion, kind=kind, path=path, schema=parsed, raw=raw)


def _namespace(schema: dict, enclosing: str = "") -> str:
    name = schema.get("name", "")
    if "." in name:
        return name.rsplit(".", 1)[0]
    return schema.get("namespace", enclosing) or ""


def _fullname(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _named_types(schema: Any, namespace: str, out: dict[str, dict] | None = None) -> dict[str, dict]:
    """Collect every named type (record/enum/fixed) of a raw schema by full name."""
    out = {} if out is None else out
    if isinstance(schema, list):
        for branch in schema:
            _named_types(branch, namespace, out)
    elif isinstance(schema, dict):
        t = schema.get("type")
        if t in _NAMED:
            ns = _namespace(schema, namespace)
            out[_fullname(schema["name"], ns)] = {**schema, "__ns__": ns}
            for f in schema.get("fields", []) if t in ("record", "error") else []:
                _named_types(f["type"], ns, out)
        elif t == "array":
            _named_types(schema["items"], namespace, out)
        elif t == "map":
            _named_types(schema["values"], namespace, out)
        elif isinstance(t, (dict, list)):
            _named_types(t, namespace, out)
    return out


def _resolve(schema: Any, names: dict[str, dict], namespace: str) -> tuple[Any, str]:
    """Follow named-type references and ``{"type": <primitive>}`` wrappers; return (schema, namespace)."""
    while True:
        if isinstance(schema, str) and schema not in _PRIMITIVES:
            target = names.get(_fullname(schema, namespace)) or names.get(schema)
            if target is None:
                return schema, namespace
            schema, namespace = target, target["__ns__"]
        elif isinstance(schema, dict) and isinstance(schema.get("type"), (dict, list)) and "logicalType" not in schema:
            schema = schema["type"]
        elif isinstance(schema, dict) and schema.get("type") in _NAMED:
            return schema, _namespace(schema, namespace)
        else:
            return schema, namespace


# ====================================================================== model generation
def _build_model(sv: SchemaVersion) -> type[BaseModel]:
    namespace = _namespace(sv.raw)
    names = _named_types(sv.raw, namespace)
    return _record_model(sv.raw, names, namespace, {})


def _record_model(schema: dict, names: dict[str, dict], namespace: str, built: dict[str, type[BaseModel]]) -> type[BaseModel]:
    ns = _namespace(schema, namespace)
    full = _fullname(schema["name"], ns)
    if full in built:
        return built[full]
    fields: dict[str, Any] = {}
    for f in schema.get("fields", []):
        annotation = _annotation(f["type"], names, ns, built)
        kwargs: dict[str, Any] = {"description": f.get("doc")}
        if "default" in f:
            kwargs["default"] = _python_default(f["type"], f["default"], names, ns)
        fields[f["name"]] = (annotation, Field(**kwargs))
    model = create_model(  # type: ignore[call-overload]
        schema["name"],
        __config__=ConfigDict(extra="forbid", frozen=False, title=schema["name"]),
        __doc__=schema.get("doc"),
        __module__=__name__,
        **fields,
    )
    built[full] = model
    return model


def _annotation(schema: Any, names: dict[str, dict], namespace: str, built: dict[str, type[BaseModel]]) -> Any:
    schema, namespace = _resolve(schema, names, namespace)
    if isinstance(schema, list):
        branches = [b for b in schema if _resolve(b, names, namespace)[0] != "null"]
        inner = [_annotation(b, names, namespace, built) for b in branches]
        ann: Any = inner[0] if len(inner) == 1 else Union[tuple(inner)] if inner else type(None)
        return Optional[ann] if len(branches) < len(schema) else ann
    if isinstance(schema, str):
        return _primitive(schema)
    t = schema.get("type")
    logical = schema.get("logicalType")
    if logical in ("timestamp-millis", "timestamp-micros", "local-timestamp-millis", "local-timestamp-micros"):
        return datetime
    if logical == "date":
        return date
    if logical == "decimal":
        return Decimal
    if t in ("record", "error"):
        return _record_model(schema, names, namespace, built)
    if t == "enum":
        return Literal[tuple(schema["symbols"])]
    if t == "fixed":
        return Annotated[bytes, Strict(), Field(min_length=schema["size"], max_length=schema["size"])]
    if t == "array":
        return list[_annotation(schema["items"], names, namespace, built)]  # type: ignore[misc]
    if t == "map":
        return dict[str, _annotation(schema["values"], names, namespace, built)]  # type: ignore[misc]
    return _primitive(t)


def _primitive(t: str) -> Any:
    return {
        "null": type(None),
        "boolean": Annotated[bool, Strict()],
        "int": Annotated[int, Strict(), Field(ge=_INT32[0], le=_INT32[1])],
        "long": Annotated[int, Strict(), Field(ge=_INT64[0], le=_INT64[1])],
        "float": Annotated[float, Strict()],
        "double": Annotated[float, Strict()],
        "bytes": Annotated[bytes, Strict()],
        "string": Annotated[str, Strict()],
    }.get(t, Any)


def _python_default(schema: Any, default: Any, names: dict[str, dict], namespace: str) -> Any:
    """Turn an Avro JSON default into the Python value the model holds."""
    schema, namespace = _resolve(schema, names, namespace)
    if isinstance(schema, list):  # union default belongs to the first branch
        return _python_default(schema[0], default, names, namespace) if schema else default
    if isinstance(schema, dict):
        logical = schema.get("logicalType")
        if logical == "timestamp-millis" and isinstance(default, int):
            return datetime.fromtimestamp(default / 1000, tz=timezone.utc)
        if logical == "timestamp-micros" and isinstance(default, int):
            return datetime.fromtimestamp(default / 1_000_000, tz=timezone.utc)
        if schema.get("type") in ("bytes", "fixed") and isinstance(default, str):
            return default.encode("latin-1")
    elif schema == "bytes" and isinstance(default, str):
        return default.encode("latin-1")
    return default


def _problems(exc: ValidationError) -> list[str]:
    """Turn pydantic errors into ``"field: message"`` strings."""
    expected = {
        "string_type": "string", "int_type": "int", "float_type": "number", "bool_type": "boolean",
        "bytes_type": "bytes", "list_type": "array", "dict_type": "map", "datetime_type": "timestamp",
        "date_type": "date", "decimal_type": "decimal", "model_type": "record",
    }
    out = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        kind = err["type"]
        if kind == "missing":
            msg = "field required"
        elif kind == "extra_forbidden":
            msg = "unknown field"
        elif kind in expected:
            msg = f"expected {expected[kind]}, got {type(err.get('input')).__name__}"
        else:
            msg = err["msg"][:1].lower() + err["msg"][1:]
        out.append(f"{where}: {msg}")
    return out


_UNFRAMED = f"the record names no schema: neither the Confluent wire format (magic byte 0 + 4-byte schema id) nor a {VERSION_HEADER!r} header"


def _text(raw: Any) -> str:
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    return "<record>" if raw is None else str(raw)


def _old_format_schema(found: Mapping[str, Any]) -> tuple[str, int]:
    """(name, version) named by the headers of an old-format record; UnknownSchema when malformed."""
    raw_name = found.get(SCHEMA_HEADER)
    if raw_name is None:
        raise UnknownSchema(None, detail=f"message has no {SCHEMA_HEADER!r} header")
    try:
        name = raw_name.decode("utf-8")
    except (UnicodeDecodeError, AttributeError):
        raise UnknownSchema(None, detail=f"{SCHEMA_HEADER!r} header is not utf-8 text") from None
    raw_version = found.get(VERSION_HEADER)
    try:
        text = raw_version.decode("utf-8")
        if not text.isdigit():
            raise ValueError(text)
        version = int(text)
    except (UnicodeDecodeError, AttributeError, ValueError):
        raise UnknownSchema(name, detail=f"{VERSION_HEADER!r} header is not a decimal version: {raw_version!r}") from None
    return name, version


def _header_values(headers: Any) -> dict[str, Any]:
    """Normalise Kafka headers (list of pairs or mapping; str or bytes keys) to ``{str: value}``; last wins."""
    items: Iterable[Any]
    if headers is None:
        return {}
    if isinstance(headers, Mapping):
        items = headers.items()
    else:
        try:
            items = list(headers)
        except TypeError:
            return {}
    out: dict[str, Any] = {}
    for item in items:
        try:
            key, val = item
        except (TypeError, ValueError):
            continue
        if isinstance(key, (bytes, bytearray)):
            try:
                key = bytes(key).decode("utf-8")
            except UnicodeDecodeError:
                continue
        if isinstance(val, str):
            val = val.encode("utf-8")
        elif isinstance(val, (bytearray, memoryview)):
            val = bytes(val)
        if isinstance(key, str):
            out[key] = val
    return out


# ====================================================================== compatibility helpers
def _sample(schema: Any, names: dict[str, dict], namespace: str, prefer_null: bool, stack: set[str]) -> Any:
    """A deterministic record of writer ``schema`` exercising every field (unions: first non-null branch)."""
    schema, namespace = _resolve(schema, names, namespace)
    if isinstance(schema, list):
        branches = [_resolve(b, names, namespace)[0] for b in schema]
        if prefer_null and "null" in branches:
            return None
        pick = next((b for b in schema if _resolve(b, names, namespace)[0] != "null"), schema[0] if schema else "null")
        return _sample(pick, names, namespace, prefer_null, stack)
    if isinstance(schema, dict):
        t = schema.get("type")
        logical = schema.get("logicalType")
        if logical == "decimal":
            return Decimal(1).scaleb(-int(schema.get("scale", 0)))
        if logical == "uuid":
            return "00000000-0000-4000-8000-000000000000"
        if t in ("record", "error"):
            full = _fullname(schema["name"], namespace)
            out = {}
            for f in schema.get("fields", []):
                if full in stack and "default" in f:
                    continue  # break recursion through defaulted fields
                out[f["name"]] = _sample(f["type"], names, namespace, prefer_null, stack | {full})
            return out
        if t == "enum":
            return schema["symbols"][0]
        if t == "fixed":
            return b"\x01" * schema["size"]
        if t == "array":
            return [] if prefer_null else [_sample(schema["items"], names, namespace, prefer_null, stack)]
        if t == "map":
            return {} if prefer_null else {"k": _sample(schema["values"], names, namespace, prefer_null, stack)}
        schema = t
    return {
        "null": None, "boolean": True, "int": 7, "long": 7, "float": 1.5, "double": 1.5,
        "bytes": b"x", "string": "x",
    }.get(schema)
