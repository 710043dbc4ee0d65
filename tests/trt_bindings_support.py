"""The real TensorRT Python bindings of several releases, imported on a CPU machine.

``make trt-bindings`` installs each release's bindings wheel (``tensorrt_bindings``, ~1 MB) into
``.compat/tensorrt-<version>/``. Its ``tensorrt.so`` links ``libnvinfer.so.N``, ``libnvinfer_plugin.so.N``,
``libnvonnxparser.so.N`` (and ``libnvparsers.so.8`` on 8.6); :func:`build_stub_libs` compiles those with
``cc`` from a few functions that return NULL/0, so the module imports and every class, enum, property and
method signature is the release's own, while ``Builder(logger)`` and ``Runtime(logger)`` fail
("factory function returned nullptr"): everything from there on needs a GPU.

For those objects :class:`Spec` stands in: an object of a real TensorRT class whose behaviour a test
supplies, and which checks every attribute it is asked for and every call made on it against that class
(the member must exist, the arguments must bind to one of its pybind11 signatures with the right types).
"""
from __future__ import annotations

import inspect
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
VERSIONS_FILE = REPO / 'tools' / 'trt_bindings_versions.txt'
COMPAT = REPO / '.compat'
OPTIONAL_ENV = 'EVIT_TRT_BINDINGS'   # 'optional': skip (not fail) when `make trt-bindings` has not run


def versions() -> list[tuple[str, str, int]]:
    """(version, pip requirement, libnvinfer soname major) of every release CI tests."""
    rows = []
    for line in VERSIONS_FILE.read_text().splitlines():
        if line.strip() and not line.startswith('#'):
            version, requirement, major = line.split()
            rows.append((version, requirement, int(major)))
    return rows


def bindings_dir(version: str) -> Path:
    return COMPAT / f'tensorrt-{version}'


# the symbols the bindings of 8.6 .. 11.x import from TensorRT's libraries (nm -D --undefined-only)
_STUB_C = '''
void *createInferBuilder_INTERNAL(void *logger, int version) { return 0; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return 0; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return 0; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return 0; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
void *getPluginRegistry(void) { return 0; }
void *getBuilderPluginRegistry(int kind) { return 0; }
int initLibNvInferPlugins(void *logger, const char *ns) { return 0; }
/* TensorRT 8.6 only: the UFF and Caffe parsers, by their C++ (mangled) names */
void *_ZN11nvuffparser15createUffParserEv(void) { return 0; }
void _ZN11nvuffparser8FieldMapC1EPKcPKvNS_9FieldTypeEi(void *self, const char *n, const void *d, int t, int l) {}
void *_ZN14nvcaffeparser117createCaffeParserEv(void) { return 0; }
void _ZN14nvcaffeparser123shutdownProtobufLibraryEv(void) {}
'''
STUB_LIBS = ('nvinfer', 'nvinfer_plugin', 'nvonnxparser', 'nvparsers')


def build_stub_libs(out: Path, major: int) -> Path:
    """``lib<name>.so.<major>`` for every library the bindings link, compiled with ``cc`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    src = out / 'trt_stub.c'
    src.write_text(_STUB_C)
    for name in STUB_LIBS:
        lib = out / f'lib{name}.so.{major}'
        subprocess.run(['cc', '-shared', '-fPIC', f'-Wl,-soname,{lib.name}', '-o', str(lib), str(src)],
                       check=True, capture_output=True, timeout=60)
    return out


def bindings_env(version: str, stub_dir: Path) -> dict[str, str]:
    """The environment of an interpreter that imports this version as ``tensorrt_bindings``."""
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join([str(bindings_dir(version)), str(REPO), str(REPO / 'tests')])
    env['LD_LIBRARY_PATH'] = os.pathsep.join(p for p in (str(stub_dir), env.get('LD_LIBRARY_PATH', '')) if p)
    env['EVIT_TRT_REAL_VERSION'] = version
    return env


# ---------------------------------------------------------------------------------------------------------
# pybind11 signatures

def _split_top(text: str, sep: str = ',') -> list[str]:
    parts, depth, cur = [], 0, ''
    for ch in text:
        depth += ch in '([{<'
        depth -= ch in ')]}>'
        if ch == sep and depth == 0:
            parts.append(cur)
            cur = ''
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts]


Param = tuple[str, str, bool]   # name, annotation, has a default


def _params(arglist: str) -> list[Param]:
    out = []
    for part in _split_top(arglist):
        head, _, default = part.partition('=')
        name, _, annot = head.partition(':')
        out.append((name.strip(), annot.strip(), bool(default.strip())))
    return out


def signatures(func: Any, name: str) -> list[list[Param]]:
    """Every overload of a pybind11 method as its parameter list without ``self``."""
    doc = getattr(func, '__doc__', None) or ''
    sigs = []
    for m in re.finditer(rf'^(?:\d+\. )?{re.escape(name)}\((.*)\)(?: -> .*)?$', doc, re.MULTILINE):
        params = _params(m.group(1))
        if params and params[0][0] == 'self':
            params = params[1:]
        if params == [('*args', '', False), ('**kwargs', '', False)]:
            continue   # the "Overloaded function." header
        sigs.append(params)
    return sigs


def setter_type(prop: property) -> str | None:
    """The value annotation of a pybind11 property setter (``(self: X, arg0: T) -> None``)."""
    m = re.search(r'\((.*)\) ->', getattr(prop.fset, '__doc__', '') or '')
    if not m:
        return None
    params = _params(m.group(1))
    return params[-1][1] if params else None


def accepts(trt: Any, annot: str, value: Any) -> bool:
    """Whether pybind11 would convert ``value`` to a parameter annotated ``annot`` (the cases we call)."""
    annot = annot.strip()
    if not annot or annot in ('object', 'capsule', 'numpy.ndarray', 'typing.Any', 'Any'):
        return True
    if annot.startswith(('Optional[', 'typing.Optional[')):
        return value is None or accepts(trt, annot[annot.index('[') + 1:-1], value)
    if value is None:
        return False
    if annot == 'str':
        return isinstance(value, str)
    if annot == 'bool':
        return isinstance(value, bool)
    if annot == 'int':
        return isinstance(value, int) and not isinstance(value, bool)
    if annot == 'float':
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annot in ('buffer', 'Buffer', 'collections.abc.Buffer'):
        return isinstance(value, (bytes, bytearray, memoryview))
    if re.match(r'(typing\.)?(List|list|Sequence)\[', annot):
        return isinstance(value, (list, tuple))
    cls_name = annot.rsplit('.', 1)[-1]
    if annot.startswith(('tensorrt', 'tensorrt_bindings')) and hasattr(trt, cls_name):
        cls = getattr(trt, cls_name)
        if isinstance(value, (Spec, Checked)):
            return issubclass(value.spec_class, cls)
        if cls_name.startswith('Dims') and isinstance(value, (list, tuple)):
            return all(isinstance(v, int) for v in value)   # pybind11 converts a sequence of ints to Dims
        return isinstance(value, cls)
    return True   # an annotation this checker does not model: not judged


def real_member(cls: type, name: str) -> Any:
    """The member ``name`` of the real class (or a base), without invoking descriptors; None if absent."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return vars(klass)[name]
    return None


def check_call(trt: Any, cls: type, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """AssertionError unless ``cls.name(*args, **kwargs)`` binds to one of the real overloads."""
    member = real_member(cls, name)
    assert member is not None, f'TensorRT {trt.__version__}: {cls.__name__} has no {name}'
    sigs = signatures(member, name)
    assert sigs, f'TensorRT {trt.__version__}: no signature for {cls.__name__}.{name} in {member.__doc__!r:.200}'
    problems = []
    for params in sigs:
        why = _bind(trt, params, args, kwargs)
        if why is None:
            return
        problems.append(why)
    raise AssertionError(f'TensorRT {trt.__version__}: {cls.__name__}.{name}{args!r:.200} {kwargs or ""} matches no '
                         f'signature: {"; ".join(problems)}')


def _bind(trt: Any, params: list[Param], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    if len(args) > len(params):
        return f'{len(args)} arguments for {len(params)} parameters {[p[0] for p in params]}'
    bound = {}
    for (pname, annot, _d), value in zip(params, args, strict=False):
        bound[pname] = (annot, value)
    for key, value in kwargs.items():
        match = [p for p in params if p[0] == key]
        if not match or key in bound:
            return f'keyword {key!r} is not a parameter {[p[0] for p in params]}'
        bound[key] = (match[0][1], value)
    missing = [p[0] for p in params if p[0] not in bound and not p[2]]
    if missing:
        return f'missing {missing}'
    for pname, (annot, value) in bound.items():
        if not accepts(trt, annot, value):
            return f'{pname}: {type(value).__name__} {value!r:.80} is not {annot}'
    return None


def check_override(base: type, name: str, override: Callable[..., Any]) -> None:
    """A Python subclass method that TensorRT calls back: the real base method's parameters must bind to it."""
    member = real_member(base, name)
    assert member is not None, f'{base.__name__} has no {name} to override'
    sigs = signatures(member, name)
    assert sigs, f'no signature for {base.__name__}.{name}'
    sig = inspect.signature(override)
    for params in sigs:
        sig.bind(None, *[object() for _ in params])   # TypeError if TensorRT's call would not fit


# ---------------------------------------------------------------------------------------------------------
# objects of real classes that need a GPU to exist

class Spec:
    """An object of the real TensorRT class ``cls`` that needs a GPU to exist; behaviour from the test.

    Reading an attribute the class lacks raises AttributeError (so ``hasattr`` answers as the real
    object would); a property returns the value the test gave (``values``); a method call is checked
    against the class's signatures, recorded in ``calls`` and answered by ``impl[name]`` (else None);
    assigning a property checks that it is writable and the value's type.
    """

    def __init__(self, trt: Any, cls: type, impl: dict[str, Callable[..., Any]] | None = None,
                 **values: Any) -> None:
        object.__setattr__(self, 'trt', trt)
        object.__setattr__(self, 'spec_class', cls)
        object.__setattr__(self, 'impl', dict(impl or {}))
        object.__setattr__(self, 'values', dict(values))
        object.__setattr__(self, 'calls', [])

    def __getattr__(self, name: str) -> Any:
        cls = self.spec_class
        member = real_member(cls, name)
        if member is None or name.startswith('__'):
            raise AttributeError(f'TensorRT {self.trt.__version__}: {cls.__name__} has no attribute {name!r}')
        if isinstance(member, property):
            if name not in self.values:
                raise AssertionError(f'test gave no value for {cls.__name__}.{name}')
            self.calls.append((name, (), {}))
            return self.values[name]

        def call(*args: Any, **kwargs: Any) -> Any:
            check_call(self.trt, cls, name, args, kwargs)
            self.calls.append((name, args, kwargs))
            fn = self.impl.get(name)
            return fn(*args, **kwargs) if fn is not None else None
        return call

    def __setattr__(self, name: str, value: Any) -> None:
        cls = self.spec_class
        prop = real_member(cls, name)
        assert isinstance(prop, property), f'TensorRT {self.trt.__version__}: {cls.__name__}.{name} is no property'
        assert prop.fset is not None, f'TensorRT {self.trt.__version__}: {cls.__name__}.{name} is read-only'
        annot = setter_type(prop)
        assert annot is None or accepts(self.trt, annot, value), \
            f'TensorRT {self.trt.__version__}: {cls.__name__}.{name} = {value!r:.80} is not {annot}'
        self.calls.append((f'{name}=', (value,), {}))
        self.values[name] = value

    def called(self, name: str) -> list[tuple[Any, ...]]:
        """The positional arguments of every call of ``name`` (``name=`` for property assignments)."""
        return [args for n, args, _kw in self.calls if n == name]


class TrtView:
    """The real bindings module with the constructors that need a GPU replaced by checked factories."""

    def __init__(self, trt: Any, **factories: Callable[..., Any]) -> None:
        self._trt = trt
        self._factories = factories

    def __getattr__(self, name: str) -> Any:
        if name in self._factories:
            cls, factory = getattr(self._trt, name), self._factories[name]

            def construct(*args: Any, **kwargs: Any) -> Any:
                check_call(self._trt, cls, '__init__', args, kwargs)
                return factory(*args, **kwargs)
            return construct
        return getattr(self._trt, name)


class Checked:
    """A fake object (``tests/trt_fakes.py``) seen through the real class ``cls``: every attribute the code
    reads must exist on the real class and every call must bind to its signatures; the fake answers.
    ``wrap(value)`` wraps what the fake returns (an engine -> a checked engine)."""

    def __init__(self, trt: Any, cls: type, target: Any, wrap: Callable[[Any], Any] | None = None) -> None:
        self._trt, self._cls, self._target, self._wrap = trt, cls, target, wrap or (lambda v: v)
        self.spec_class = cls

    def __getattr__(self, name: str) -> Any:
        member = real_member(self._cls, name)
        if member is None or name.startswith('__'):
            raise AttributeError(f'TensorRT {self._trt.__version__}: {self._cls.__name__} has no attribute {name!r}')
        if isinstance(member, property):
            return getattr(self._target, name)
        method = getattr(self._target, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            check_call(self._trt, self._cls, name, args, kwargs)
            return self._wrap(method(*args, **kwargs))
        return call
