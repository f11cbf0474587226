"""A small, bounds-checked reader for the sections of a WebAssembly module.

Why our own reader: wasmtime tells us whether a module is valid, but not what
it declares without compiling it, and the validator must not compile
untrusted code just to learn a memory's minimum size or an export's type.
This reader decodes only the sections the policy checks need (types,
imports, functions, tables, memories, exports) and skips the others by their
length prefix.

It is run after wasmtime has validated the module, yet it still checks every
bound itself: any malformed input raises `WasmReadError`, never IndexError or
a huge allocation, so a bug elsewhere cannot turn bad bytes into a crash.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

_T = TypeVar("_T")

MAGIC = b"\0asm"
WASM_PAGE_SIZE = 65536

_SECTION_TYPE = 1
_SECTION_IMPORT = 2
_SECTION_FUNCTION = 3
_SECTION_TABLE = 4
_SECTION_MEMORY = 5
_SECTION_EXPORT = 7

_NUMERIC_TYPES = {0x7F: "i32", 0x7E: "i64", 0x7D: "f32", 0x7C: "f64", 0x7B: "v128"}
# Packed storage types only occur in GC struct and array fields.
_PACKED_TYPES = {0x78: "i8", 0x77: "i16"}
# Abstract heap types (reference types, typed function references, GC,
# exceptions, stack switching). A single byte stands for both the heap type
# and, as a value type, the nullable reference `(ref null <ht>)`.
_ABSTRACT_HEAP_TYPES = {
    0x70: "func",
    0x6F: "extern",
    0x6E: "any",
    0x6D: "eq",
    0x6C: "i31",
    0x6B: "struct",
    0x6A: "array",
    0x69: "exn",
    0x68: "cont",
    0x71: "none",
    0x72: "noextern",
    0x73: "nofunc",
    0x74: "noexn",
    0x75: "nocont",
}


class WasmReadError(ValueError):
    """The bytes are not a well-formed WebAssembly module."""


class ExternKind(enum.IntEnum):
    """Kinds of imports and exports, numbered as in the binary format."""

    FUNC = 0
    TABLE = 1
    MEMORY = 2
    GLOBAL = 3
    TAG = 4

    def __str__(self) -> str:
        return "function" if self is ExternKind.FUNC else self.name.lower()


@dataclass(frozen=True)
class FuncType:
    """A function signature; value types are spelled as in the text format."""

    params: tuple[str, ...]
    results: tuple[str, ...]

    def __str__(self) -> str:
        return f"({', '.join(self.params)}) -> ({', '.join(self.results)})"


@dataclass(frozen=True)
class Limits:
    """Declared size of a memory (in pages) or a table (in elements)."""

    min: int
    max: int | None
    shared: bool = False
    is64: bool = False
    # log2 of the page size under the custom-page-sizes proposal.
    page_size_log2: int | None = None

    @property
    def page_size(self) -> int:
        """Bytes per page: 64 KiB unless the module chose a custom size."""
        return WASM_PAGE_SIZE if self.page_size_log2 is None else 1 << self.page_size_log2


@dataclass(frozen=True)
class TableType:
    element: str
    limits: Limits


@dataclass(frozen=True)
class Import:
    """One import. Only the part of its type relevant to its kind is set."""

    module: str
    name: str
    kind: ExternKind
    type_index: int | None = None  # functions and tags
    table: TableType | None = None
    memory: Limits | None = None

    @property
    def qualified_name(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass(frozen=True)
class Export:
    name: str
    kind: ExternKind
    index: int


@dataclass(frozen=True)
class ModuleInfo:
    """What a module declares. Index spaces start with the imported items."""

    # None marks a type that is not a function type (GC struct/array, continuation).
    types: tuple[FuncType | None, ...]
    imports: tuple[Import, ...]
    functions: tuple[int, ...]  # type index of each function the module defines
    tables: tuple[TableType, ...]  # defined tables only
    memories: tuple[Limits, ...]  # defined memories only
    exports: tuple[Export, ...]

    def type_at(self, type_index: int | None) -> FuncType | None:
        if type_index is None or not 0 <= type_index < len(self.types):
            return None
        return self.types[type_index]

    def func_type(self, func_index: int) -> FuncType | None:
        """Signature of a function in the function index space."""
        imported = [i.type_index for i in self.imports if i.kind is ExternKind.FUNC]
        indices = imported + list(self.functions)
        if not 0 <= func_index < len(indices):
            return None
        return self.type_at(indices[func_index])

    def all_memories(self) -> tuple[Limits, ...]:
        """Memories in index-space order: imported first, then defined."""
        imported = tuple(i.memory for i in self.imports if i.memory is not None)
        return imported + self.memories

    def all_tables(self) -> tuple[TableType, ...]:
        """Tables in index-space order: imported first, then defined."""
        imported = tuple(i.table for i in self.imports if i.table is not None)
        return imported + self.tables


class _Cursor:
    """Reads from data[pos:end]; every read checks the bound."""

    def __init__(self, data: bytes, pos: int, end: int) -> None:
        self._data = data
        self.pos = pos
        self.end = end

    def at_end(self) -> bool:
        return self.pos >= self.end

    def peek(self) -> int:
        if self.pos >= self.end:
            raise WasmReadError(f"unexpected end of data at offset {self.pos:#x}")
        return self._data[self.pos]

    def byte(self) -> int:
        value = self.peek()
        self.pos += 1
        return value

    def take(self, count: int) -> bytes:
        if count > self.end - self.pos:
            raise WasmReadError(
                f"{count} bytes needed at offset {self.pos:#x} but only "
                f"{self.end - self.pos} remain"
            )
        chunk = self._data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def sub(self, count: int) -> _Cursor:
        """A cursor over the next `count` bytes; this one moves past them."""
        start = self.pos
        self.take(count)
        return _Cursor(self._data, start, start + count)

    def _leb(self, bits: int, signed: bool) -> int:
        # LEB128 as the spec restricts it: at most ceil(bits/7) bytes, and the
        # unused bits of the last byte must be zero (or the sign extension).
        start = self.pos
        result = 0
        shift = 0
        max_bytes = -(-bits // 7)
        for _ in range(max_bytes):
            b = self.byte()
            result |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                if signed and b & 0x40:
                    result -= 1 << shift
                if signed:
                    if not -(1 << (bits - 1)) <= result < (1 << (bits - 1)):
                        break
                elif result >= 1 << bits:
                    break
                return result
        raise WasmReadError(f"malformed {bits}-bit LEB128 integer at offset {start:#x}")

    def u32(self) -> int:
        return self._leb(32, signed=False)

    def u64(self) -> int:
        return self._leb(64, signed=False)

    def s33(self) -> int:
        return self._leb(33, signed=True)

    def s32(self) -> int:
        return self._leb(32, signed=True)

    def s64(self) -> int:
        return self._leb(64, signed=True)

    def name(self) -> str:
        start = self.pos
        raw = self.take(self.u32())
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise WasmReadError(f"name at offset {start:#x} is not valid UTF-8") from None


def read_module(wasm: bytes) -> ModuleInfo:
    """Decode the declarations of a core module; raise WasmReadError if malformed."""
    if len(wasm) < 8 or wasm[:4] != MAGIC:
        raise WasmReadError("missing the \\0asm magic number and version")
    if wasm[4:8] != b"\x01\x00\x00\x00":
        raise WasmReadError(f"not a version 1 core module (header {wasm[4:8].hex()})")
    types: list[FuncType | None] = []
    imports: list[Import] = []
    functions: list[int] = []
    tables: list[TableType] = []
    memories: list[Limits] = []
    exports: list[Export] = []
    cursor = _Cursor(wasm, 8, len(wasm))
    while not cursor.at_end():
        section_id = cursor.byte()
        body = cursor.sub(cursor.u32())
        if section_id == _SECTION_TYPE:
            types = [t for group in _vec(body, _read_rec_group) for t in group]
        elif section_id == _SECTION_IMPORT:
            imports = _vec(body, _read_import)
        elif section_id == _SECTION_FUNCTION:
            functions = _vec(body, _Cursor.u32)
        elif section_id == _SECTION_TABLE:
            tables = _vec(body, _read_table)
        elif section_id == _SECTION_MEMORY:
            memories = _vec(body, _read_limits)
        elif section_id == _SECTION_EXPORT:
            exports = _vec(body, _read_export)
        else:
            # Other sections hold code and data the checks do not need.
            continue
        if not body.at_end():
            raise WasmReadError(
                f"section {section_id} has {body.end - body.pos} unread bytes "
                f"at offset {body.pos:#x}"
            )
    return ModuleInfo(
        types=tuple(types),
        imports=tuple(imports),
        functions=tuple(functions),
        tables=tuple(tables),
        memories=tuple(memories),
        exports=tuple(exports),
    )


def _vec(cursor: _Cursor, read_item: Callable[[_Cursor], _T]) -> list[_T]:
    # The count comes from untrusted input; each item consumes at least one
    # byte, so a huge count fails at the end of the section, not in memory.
    return [read_item(cursor) for _ in range(cursor.u32())]


def _read_rec_group(cursor: _Cursor) -> list[FuncType | None]:
    # A GC recursion group (0x4E) defines several types, each taking an index.
    if cursor.peek() == 0x4E:
        cursor.byte()
        return _vec(cursor, _read_sub_type)
    return [_read_sub_type(cursor)]


def _read_sub_type(cursor: _Cursor) -> FuncType | None:
    form = cursor.byte()
    if form in (0x50, 0x4F):  # GC subtype declaration: supertypes, then the type
        _vec(cursor, _Cursor.u32)
        form = cursor.byte()
    if form == 0x60:
        params = _vec(cursor, _read_value_type)
        results = _vec(cursor, _read_value_type)
        return FuncType(tuple(params), tuple(results))
    if form == 0x5F:  # struct
        _vec(cursor, _read_field_type)
        return None
    if form == 0x5E:  # array
        _read_field_type(cursor)
        return None
    if form == 0x5D:  # continuation (stack switching)
        cursor.s33()
        return None
    raise WasmReadError(f"unknown type form {form:#04x} at offset {cursor.pos - 1:#x}")


def _read_field_type(cursor: _Cursor) -> None:
    if cursor.peek() in _PACKED_TYPES:
        cursor.byte()
    else:
        _read_value_type(cursor)
    _read_mutability(cursor)


def _read_mutability(cursor: _Cursor) -> None:
    flag = cursor.byte()
    if flag not in (0, 1):
        raise WasmReadError(f"bad mutability flag {flag:#04x} at offset {cursor.pos - 1:#x}")


def _read_value_type(cursor: _Cursor) -> str:
    code = cursor.byte()
    if code in _NUMERIC_TYPES:
        return _NUMERIC_TYPES[code]
    if code in _ABSTRACT_HEAP_TYPES:
        return f"{_ABSTRACT_HEAP_TYPES[code]}ref"
    if code in (0x63, 0x64):
        heap = _read_heap_type(cursor)
        return f"(ref null {heap})" if code == 0x63 else f"(ref {heap})"
    raise WasmReadError(f"unknown value type {code:#04x} at offset {cursor.pos - 1:#x}")


def _read_heap_type(cursor: _Cursor) -> str:
    if cursor.peek() in _ABSTRACT_HEAP_TYPES:
        return _ABSTRACT_HEAP_TYPES[cursor.byte()]
    start = cursor.pos
    index = cursor.s33()
    if index < 0:
        raise WasmReadError(f"unknown heap type at offset {start:#x}")
    return str(index)


def _read_limits(cursor: _Cursor) -> Limits:
    start = cursor.pos
    flags = cursor.byte()
    if flags & ~0x0F:
        raise WasmReadError(f"bad limits flags {flags:#04x} at offset {start:#x}")
    is64 = bool(flags & 0x04)
    read = cursor.u64 if is64 else cursor.u32
    minimum = read()
    maximum = read() if flags & 0x01 else None
    page_size_log2 = cursor.u32() if flags & 0x08 else None
    return Limits(minimum, maximum, bool(flags & 0x02), is64, page_size_log2)


def _read_table_type(cursor: _Cursor) -> TableType:
    element = _read_value_type(cursor)
    return TableType(element, _read_limits(cursor))


def _read_table(cursor: _Cursor) -> TableType:
    # With typed function references a table may carry an initializer:
    # 0x40 0x00 tabletype expr.
    if cursor.peek() != 0x40:
        return _read_table_type(cursor)
    cursor.byte()
    if cursor.byte() != 0x00:
        raise WasmReadError(f"bad table encoding at offset {cursor.pos - 1:#x}")
    table = _read_table_type(cursor)
    _skip_const_expr(cursor)
    return table


def _read_import(cursor: _Cursor) -> Import:
    module = cursor.name()
    name = cursor.name()
    start = cursor.pos
    kind = cursor.byte()
    if kind == ExternKind.FUNC:
        return Import(module, name, ExternKind.FUNC, type_index=cursor.u32())
    if kind == ExternKind.TABLE:
        return Import(module, name, ExternKind.TABLE, table=_read_table_type(cursor))
    if kind == ExternKind.MEMORY:
        return Import(module, name, ExternKind.MEMORY, memory=_read_limits(cursor))
    if kind == ExternKind.GLOBAL:
        _read_value_type(cursor)
        _read_mutability(cursor)
        return Import(module, name, ExternKind.GLOBAL)
    if kind == ExternKind.TAG:
        if cursor.byte() != 0x00:
            raise WasmReadError(f"bad tag attribute at offset {cursor.pos - 1:#x}")
        return Import(module, name, ExternKind.TAG, type_index=cursor.u32())
    raise WasmReadError(f"unknown import kind {kind:#04x} at offset {start:#x}")


def _read_export(cursor: _Cursor) -> Export:
    name = cursor.name()
    start = cursor.pos
    kind = cursor.byte()
    try:
        extern_kind = ExternKind(kind)
    except ValueError:
        raise WasmReadError(f"unknown export kind {kind:#04x} at offset {start:#x}") from None
    return Export(name, extern_kind, cursor.u32())


# Immediates of the instructions allowed in constant expressions (MVP,
# extended-const, reference types, SIMD and GC), so a table initializer can be
# skipped without a full instruction decoder.
_ConstOps = dict[int, tuple[Callable[[_Cursor], object], ...]]
_CONST_OPS: _ConstOps = {
    0x41: (_Cursor.s32,),  # i32.const
    0x42: (_Cursor.s64,),  # i64.const
    0x23: (_Cursor.u32,),  # global.get
    0xD2: (_Cursor.u32,),  # ref.func
    0xD0: (_read_heap_type,),  # ref.null
    0x6A: (), 0x6B: (), 0x6C: (),  # i32.add/sub/mul (extended-const)
    0x7C: (), 0x7D: (), 0x7E: (),  # i64.add/sub/mul (extended-const)
}
_GC_CONST_OPS: _ConstOps = {
    0: (_Cursor.u32,),  # struct.new
    1: (_Cursor.u32,),  # struct.new_default
    6: (_Cursor.u32,),  # array.new
    7: (_Cursor.u32,),  # array.new_default
    8: (_Cursor.u32, _Cursor.u32),  # array.new_fixed
    26: (), 27: (), 28: (),  # any.convert_extern, extern.convert_any, ref.i31
}


def _skip_const_expr(cursor: _Cursor) -> None:
    while True:
        start = cursor.pos
        op = cursor.byte()
        if op == 0x0B:  # end
            return
        if op == 0x43:  # f32.const
            cursor.take(4)
        elif op == 0x44:  # f64.const
            cursor.take(8)
        elif op == 0xFD and cursor.u32() == 12:  # v128.const
            cursor.take(16)
        elif op == 0xFB and (sub := cursor.u32()) in _GC_CONST_OPS:
            for read in _GC_CONST_OPS[sub]:
                read(cursor)
        elif op in _CONST_OPS:
            for read in _CONST_OPS[op]:
                read(cursor)
        else:
            raise WasmReadError(f"unsupported instruction in constant expression at offset {start:#x}")
