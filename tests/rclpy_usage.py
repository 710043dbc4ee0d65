"""What the ROS layer uses of rclpy and of ROS interfaces, found by static analysis (``ast``) of its source, and
checked against a fact file of tools/extract_rclpy_names.py (Humble's, or one extracted from the installed rclpy).

A use is a module, a name imported from a module, a member (method, attribute, nested class) of an rclpy class or
module reached from such a name, a keyword argument of a call to one of them, a message/service type, a field
given to a message constructor or read/written on a message the code built, or a message constant. Values the
code types as ``Any`` are followed where their type is known: calls whose return annotation names an rclpy class
(``rclpy.create_node`` -> Node, ``create_publisher`` -> Publisher), ``self`` in a class derived from an rclpy
class, annotations, and the names in :data:`RECEIVER_TYPES`. What cannot be typed is not a use (the test's
coverage check lists names it must find, so the analysis cannot silently go blind).

A use is *guarded* when the code has a fallback for its absence: inside ``try:`` with an ``except ImportError``/
``AttributeError``/``TypeError`` (a keyword an older rclpy lacks) (``guard='try'``; the handler's own uses get
``'except'``: the older distro's path), under
``if hasattr(obj, 'name')`` (``'hasattr'``), or ``getattr(obj, 'name', default)`` (``'getattr'``).
"""
from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCOPE = ('evit_ros/ros/*.py', 'evit_ros/bench/node*.py')
# parameters and attributes the ROS layer annotates as Any that always hold an rclpy node
RECEIVER_TYPES = {'node': 'rclpy.node.Node', 'self.node': 'rclpy.node.Node'}
# attributes every generated message class has besides its fields
MESSAGE_CLASS_NAMES = {'get_fields_and_field_types', 'SLOT_TYPES', 'Request', 'Response', 'Event'}
_GUARD_ERRORS = {'ImportError', 'ModuleNotFoundError', 'AttributeError', 'TypeError'}   # TypeError: a keyword


@dataclass(frozen=True)
class Use:
    where: str         # file:line
    kind: str          # module | name | member | kwarg | interface | field | constant
    target: str        # rclpy.qos / rclpy.qos.QoSProfile / rclpy.node.Node.create_timer / sensor_msgs/msg/Image
    detail: str = ''   # the keyword argument or field name
    guard: str = ''    # '' | try | except | hasattr | getattr

    @property
    def name(self) -> str:
        return f'{self.target}({self.detail}=)' if self.kind == 'kwarg' else (
            f'{self.target}.{self.detail}' if self.detail else self.target)

    @property
    def private(self) -> bool:
        last = self.detail if self.kind == 'field' else self.target.rsplit('.', 1)[-1]
        return self.kind in ('member', 'field') and last.startswith('_') and not last.startswith('__')


class Facts:
    """Lookups in one fact file (the JSON of tools/extract_rclpy_names.py)."""

    def __init__(self, data: dict[str, Any], interfaces: Any = None) -> None:
        self.modules: dict[str, dict[str, str]] = data['modules']
        self.classes: dict[str, Any] = data['classes']
        self.functions: dict[str, Any] = data['functions']
        self.interfaces = interfaces if interfaces is not None else data.get('interfaces', {})

    # names ---------------------------------------------------------------------------------------------------
    def name(self, module: str, name: str, depth: int = 0) -> tuple[str, str] | None:
        """What ``module.name`` is: ('module'|'class'|'callable'|'opaque', qualified) or None (missing)."""
        names = self.modules.get(module)
        if names is None or depth > 10:
            return None
        bound = names.get(name)
        if bound is None:
            return ('module', f'{module}.{name}') if f'{module}.{name}' in self.modules else None
        if bound == 'class':
            return 'class', f'{module}.{name}'
        if bound == 'function':
            return 'callable', f'{module}.{name}'
        if bound.startswith('module:'):
            target = bound[len('module:'):]
            return ('module', target) if target in self.modules else ('opaque', target)
        if bound.startswith('import:'):
            src, _, attr = bound[len('import:'):].rpartition('.')
            if f'{src}.{attr}' in self.modules:
                return 'module', f'{src}.{attr}'
            if src in self.modules:
                return self.name(src, attr, depth + 1) or ('opaque', f'{src}.{attr}')
            return 'opaque', f'{src}.{attr}'
        return 'opaque', f'{module}.{name}'

    def module_of(self, qualified: str) -> str:
        parts = qualified.split('.')
        for i in range(len(parts), 0, -1):
            if '.'.join(parts[:i]) in self.modules:
                return '.'.join(parts[:i])
        return parts[0]

    def mro(self, cls: str) -> tuple[list[str], bool]:
        """The rclpy classes of ``cls``'s MRO (depth first) and whether a base outside rclpy (or unknown) exists."""
        seen: list[str] = []
        external = False
        todo = [cls]
        while todo:
            c = todo.pop(0)
            if c in seen:
                continue
            if c not in self.classes:
                external = external or c not in ('object',)
                continue
            seen.append(c)
            todo += self.classes[c]['bases']
        return seen, external

    def member(self, cls: str, name: str) -> tuple[str, str] | None | bool:
        """('callable'|'class'|'attribute', qualified) of a member; None when missing; True when unknowable
        (the class has a base outside rclpy, e.g. an enum's ``value``)."""
        classes, external = self.mro(cls)
        for c in classes:
            info = self.classes[c]
            if name in info['methods']:
                return 'callable', f'{c}.{name}'
            if f'{c}.{name}' in self.classes:
                return 'class', f'{c}.{name}'
            if name in info['attributes']:
                return 'attribute', f'{c}.{name}'
        return True if external else None

    def signature(self, qualified: str) -> dict[str, Any] | None:
        if qualified in self.functions:
            return self.functions[qualified]
        cls, _, meth = qualified.rpartition('.')
        return self.classes.get(cls, {}).get('methods', {}).get(meth)

    def init_accepts(self, cls: str, kw: str) -> bool | None:
        """Whether the constructor of ``cls`` takes keyword ``kw`` (None: unknowable)."""
        classes, external = self.mro(cls)
        inits = [m[k] for c in classes for m in [self.classes[c]['methods']] for k in ('__init__', '__new__')
                 if k in m]   # Humble's Clock takes its clock_type in __new__
        if not inits:
            return None if external else False
        if kw in inits[0]['params']:
            return True
        if not inits[0]['varkw']:
            return False
        # **kwargs: passed on to a base's __init__ or, like QoSProfile, matched against the class's attributes
        return any(kw in i['params'] for i in inits) or any(
            kw in self.classes[c]['attributes'] for c in classes) or (None if external else False)

    def returns(self, qualified: str) -> tuple[str, str] | None:
        sig = self.signature(qualified)
        ann = (sig or {}).get('returns') or ''
        ann = ann.strip('\'"')
        if not ann or not ann.replace('.', '').replace('_', '').isalnum():
            return None
        mod = self.module_of(qualified)
        head, _, rest = ann.partition('.')
        found = self.name(mod, head)
        if found and rest and found[0] == 'module':
            found = self.name(found[1], rest)
        return found if found and found[0] == 'class' else None

    # interfaces -------------------------------------------------------------------------------------------------
    def interface(self, key: str) -> dict[str, Any] | None:
        if callable(self.interfaces):
            return self.interfaces(key)
        parts = key.split('/')
        if len(parts) == 4:   # pkg/srv/Type/Request
            return self.interfaces.get('/'.join(parts[:3]), {}).get(parts[3])
        return self.interfaces.get(key)

    def has(self, use: Use) -> bool | None:
        """True: exists; False: missing; None: unknowable here."""
        if use.kind == 'module':
            return use.target in self.modules
        if use.kind in ('name', 'member'):
            owner, _, name = use.target.rpartition('.')
            if use.kind == 'name' or owner in self.modules:   # a name imported from a module
                return self.name(owner, name) is not None
            got = self.member(owner, name)
            return None if got is True else got is not None
        if use.kind == 'kwarg':
            if use.target in self.classes:
                return self.init_accepts(use.target, use.detail)
            sig = self.signature(use.target)
            if sig is None:
                return None
            return use.detail in sig['params'] or (None if sig['varkw'] else False)
        if use.kind in ('interface', 'field', 'constant'):
            info = self.interface(use.target)
            if use.kind == 'interface' or info is None:
                return info is not None
            if use.detail in MESSAGE_CLASS_NAMES:
                return True
            if use.kind == 'field' and use.detail.startswith('_'):   # the generated slot behind a field
                return use.detail[1:] in info['fields']
            return use.detail in info['fields' if use.kind == 'field' else 'constants'] or (
                use.kind == 'constant' and use.detail in info['fields'])
        raise ValueError(use.kind)


# ---------------------------------------------------------------------------------------------------------------
# the analysis

class _Scope:
    def __init__(self, parent: _Scope | None = None) -> None:
        self.parent, self.env = parent, {}

    def get(self, name: str) -> Any:
        s: _Scope | None = self
        while s is not None:
            if name in s.env:
                return s.env[name]
            s = s.parent
        return None


class _Analyzer(ast.NodeVisitor):
    def __init__(self, facts: Facts, rel: str, project_classes: dict[str, Any]) -> None:
        self.facts, self.rel, self.project = facts, rel, project_classes
        self.uses: list[Use] = []
        self.guards: list[tuple[str, str]] = []    # (kind, member name or '')
        self.scope = _Scope()

    # bookkeeping ---------------------------------------------------------------------------------------------
    def add(self, node: ast.AST, kind: str, target: str, detail: str = '', guard: str = '') -> None:
        name = detail or target.rsplit('.', 1)[-1]
        if not guard:
            for g, member in reversed(self.guards):
                if g in ('try', 'except') or member == name:
                    guard = g
                    break
        self.uses.append(Use(f'{self.rel}:{getattr(node, "lineno", 0)}', kind, target, detail, guard))

    def bind(self, name: str, value: Any) -> None:
        if value is not None:
            self.scope.env[name] = value

    # imports ----------------------------------------------------------------------------------------------------
    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            if a.name.split('.')[0] == 'rclpy':
                self.add(node, 'module', a.name)
                self.bind(a.asname or 'rclpy', ('module', a.name if a.asname else 'rclpy'))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = node.module or ''
        top, _, sub = mod.partition('.')
        if top == 'rclpy':
            self.add(node, 'module', mod)
            for a in node.names:
                self.add(node, 'name', f'{mod}.{a.name}')
                self.bind(a.asname or a.name, self.facts.name(mod, a.name))
        elif sub in ('msg', 'srv') and top:
            for a in node.names:
                self.add(node, 'interface', f'{top}/{sub}/{a.name}')
                self.bind(a.asname or a.name, ('iface', f'{top}/{sub}/{a.name}'))
        elif mod.startswith('evit_ros'):
            for a in node.names:
                if a.name in self.project:
                    self.bind(a.asname or a.name, ('projclass', a.name))

    # types of expressions -------------------------------------------------------------------------------------
    def typeof(self, node: ast.expr) -> Any:
        if isinstance(node, ast.Name):
            found = self.scope.get(node.id)
            if found is None and node.id in RECEIVER_TYPES:
                return 'instance', RECEIVER_TYPES[node.id]
            return found
        if isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name) and node.value.id == 'self':
                key = f'self.{node.attr}'
                found = self.scope.get(key)
                if found is None and key in RECEIVER_TYPES:
                    return 'instance', RECEIVER_TYPES[key]
                if found is not None:
                    return found
            return self.member_type(node)
        if isinstance(node, ast.Call):
            return self.call_type(node)
        return None

    def member_type(self, node: ast.Attribute, record: bool = True, guard: str = '') -> Any:
        base = self.typeof(node.value)
        if base is None:
            return None
        kind, what = base[0], base[1]
        name = node.attr
        if kind == 'module':
            if record:
                self.add(node, 'member', f'{what}.{name}', guard=guard)
            return self.facts.name(what, name)
        if kind in ('class', 'instance', 'projinst'):
            cls = what
            if kind == 'projinst':
                info = self.project[what]
                if name in info['members']:
                    return None
                cls = info['base']
            if record:
                self.add(node, 'member', f'{cls}.{name}', guard=guard)
            got = self.facts.member(cls, name)
            if isinstance(got, tuple):
                if got[0] == 'attribute' and kind == 'class':
                    return 'instance', cls       # an enum member of its class
                if got[0] == 'callable':
                    return 'method', got[1]
                if got[0] == 'class':
                    return 'class', got[1]
            return None
        if kind == 'iface':
            if record:
                self.add(node, 'constant', what, name, guard=guard)
            if name in ('Request', 'Response') and '/srv/' in what:
                return 'iface', f'{what}/{name}'
            return None
        if kind == 'ifaceinst':
            if record:
                self.add(node, 'field', what, name, guard=guard)
            return None
        return None

    def call_type(self, node: ast.Call) -> Any:
        f = self.typeof(node.func)
        if f is None:
            return None
        kind, what = f[0], f[1]
        kws = [k.arg for k in node.keywords if k.arg]
        for k in node.keywords:   # **kwargs built as a dict literal just before
            if k.arg is None and isinstance(k.value, ast.Name):
                got = self.scope.get(k.value.id)
                kws += list(got[1]) if got and got[0] == 'dict' else []
        if kind == 'class':
            for k in kws:
                self.add(node, 'kwarg', what, k)
            return 'instance', what
        if kind in ('callable', 'method'):
            for k in kws:
                self.add(node, 'kwarg', what, k)
            return self._instance(self.facts.returns(what))
        if kind == 'iface':
            for k in kws:
                self.add(node, 'field', what, k)
            return 'ifaceinst', what
        if kind == 'projclass':
            info = self.project[what]
            for k in kws:
                if k not in info['init_params'] and info['init_varkw']:
                    self.add(node, 'kwarg', info['base'], k)
            return 'projinst', what
        return None

    @staticmethod
    def _instance(found: tuple[str, str] | None) -> Any:
        return ('instance', found[1]) if found else None

    # statements -----------------------------------------------------------------------------------------------
    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        outer = self.scope
        self.scope = _Scope(outer)
        if node.name in self.project:   # self: the project's members first, then the rclpy base's
            self.bind('self', ('projinst', node.name))
        for st in node.body:
            self.visit(st)
        self.scope = outer

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer = self.scope
        self.scope = _Scope(outer)
        for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs:
            if a.annotation is not None:
                ann = a.annotation
                if isinstance(ann, ast.BinOp):   # X | None
                    ann = ann.left
                t = self.typeof(ann) if isinstance(ann, (ast.Name, ast.Attribute)) else None
                if t and t[0] == 'class':
                    self.bind(a.arg, ('instance', t[1]))
                elif t and t[0] == 'projclass':
                    self.bind(a.arg, ('projinst', t[1]))
                elif a.arg in RECEIVER_TYPES and ast.unparse(a.annotation) == 'Any':
                    self.bind(a.arg, ('instance', RECEIVER_TYPES[a.arg]))
        for st in node.body:
            self.visit(st)
        self.scope = outer

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def visit_Assign(self, node: ast.Assign) -> None:
        t = self.typeof(node.value)
        literal = node.value.body if isinstance(node.value, ast.IfExp) else node.value
        if isinstance(literal, ast.Dict) and all(isinstance(k, ast.Constant) for k in literal.keys):
            t = ('dict', tuple(k.value for k in literal.keys if isinstance(k, ast.Constant)))
        for target in node.targets:
            if isinstance(target, ast.Name):
                self.bind(target.id, t)
            elif isinstance(target, ast.Attribute):
                if isinstance(target.value, ast.Name) and target.value.id == 'self':
                    self.bind(f'self.{target.attr}', t)
                else:
                    self.member_type(target)   # a field written on a message the code built
        self.visit(node.value)

    def visit_Try(self, node: ast.Try) -> None:
        guarded = any(self._catches(h.type) for h in node.handlers)
        if guarded:
            self.guards.append(('try', ''))
        for st in node.body:
            self.visit(st)
        if guarded:
            self.guards.pop()
        for h in node.handlers:
            mark = self._catches(h.type)
            if mark:
                self.guards.append(('except', ''))
            for st in h.body:
                self.visit(st)
            if mark:
                self.guards.pop()
        for st in node.orelse + node.finalbody:
            self.visit(st)

    @staticmethod
    def _catches(t: ast.expr | None) -> bool:
        names = [e for e in (t.elts if isinstance(t, ast.Tuple) else [t])] if t is not None else []
        return any(isinstance(e, ast.Name) and e.id in _GUARD_ERRORS for e in names)

    def _hasattr_names(self, test: ast.expr) -> list[str]:
        out = []
        for n in ast.walk(test):
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == 'hasattr' \
                    and len(n.args) == 2 and isinstance(n.args[1], ast.Constant) and isinstance(n.args[1].value, str):
                out.append(n.args[1].value)
        return out

    def _guarded_branch(self, test: ast.expr, body: list[ast.stmt] | ast.expr, orelse: list[ast.stmt] | ast.expr) \
            -> None:
        self.visit(test)
        names = self._hasattr_names(test)
        self.guards += [('hasattr', n) for n in names]
        for st in (body if isinstance(body, list) else [body]):
            self.visit(st)
        del self.guards[len(self.guards) - len(names):]
        for st in (orelse if isinstance(orelse, list) else [orelse]):
            self.visit(st)

    def visit_If(self, node: ast.If) -> None:
        self._guarded_branch(node.test, node.body, node.orelse)

    def visit_IfExp(self, node: ast.IfExp) -> None:
        self._guarded_branch(node.test, node.body, node.orelse)

    # expressions ----------------------------------------------------------------------------------------------
    def visit_Call(self, node: ast.Call) -> None:
        f = node.func
        if isinstance(f, ast.Name) and f.id in ('hasattr', 'getattr') and len(node.args) >= 2 \
                and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
            probe = ast.Attribute(value=node.args[0], attr=node.args[1].value, ctx=ast.Load())
            ast.copy_location(probe, node)
            guard = 'hasattr' if f.id == 'hasattr' else ('getattr' if len(node.args) == 3 else '')
            self.member_type(probe, guard=guard)
            for a in node.args[2:]:
                self.visit(a)
            return
        self.call_type(node)
        if not isinstance(f, ast.Attribute):
            self.generic_visit(node)
            return
        self.visit(f.value)
        for a in node.args:
            self.visit(a)
        for k in node.keywords:
            self.visit(k.value)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self.member_type(node)
        if self.typeof(node.value) is None:
            self.visit(node.value)


def project_classes(files: list[Path], facts: Facts) -> dict[str, Any]:
    """Classes of the ROS layer derived from an rclpy class: their rclpy base, own members and constructor."""
    out: dict[str, Any] = {}
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        imported: dict[str, tuple[str, str] | None] = {}
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and (n.module or '').startswith('rclpy'):
                for a in n.names:
                    imported[a.asname or a.name] = facts.name(n.module or '', a.name)
        for n in ast.walk(tree):
            if not isinstance(n, ast.ClassDef):
                continue
            base = next((imported[b.id] for b in n.bases if isinstance(b, ast.Name) and imported.get(b.id)), None)
            if not base or base[0] != 'class':
                continue
            members = {st.name for st in n.body if isinstance(st, (ast.FunctionDef, ast.AsyncFunctionDef))}
            members |= {st.target.id for st in n.body if isinstance(st, ast.AnnAssign)
                        and isinstance(st.target, ast.Name)}
            members |= {t.id for st in n.body if isinstance(st, ast.Assign) for t in st.targets
                        if isinstance(t, ast.Name)}
            for m in ast.walk(n):
                if isinstance(m, (ast.Assign, ast.AnnAssign)):
                    for t in (m.targets if isinstance(m, ast.Assign) else [m.target]):
                        if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == 'self':
                            members.add(t.attr)
            init = next((st for st in n.body if isinstance(st, ast.FunctionDef) and st.name == '__init__'), None)
            params = [a.arg for a in (init.args.args + init.args.kwonlyargs)] if init else []
            out[n.name] = {'base': base[1], 'members': members, 'init_params': params,
                           'init_varkw': bool(init and init.args.kwarg)}
    return out


def scope_files() -> list[Path]:
    return sorted(p for pattern in SCOPE for p in REPO.glob(pattern))


def analyze_source(source: str, facts: Facts, rel: str = '<source>',
                   project: dict[str, Any] | None = None) -> list[Use]:
    a = _Analyzer(facts, rel, project or {})
    a.visit(ast.parse(source))
    return a.uses


def analyze(facts: Facts) -> list[Use]:
    """Every use in the ROS layer (:data:`SCOPE`)."""
    files = scope_files()
    project = project_classes(files, facts)
    uses: list[Use] = []
    for path in files:
        uses += analyze_source(path.read_text(), facts, str(path.relative_to(REPO)), project)
    return uses


def iter_missing(uses: list[Use], facts: Facts) -> Iterator[Use]:
    for u in uses:
        if facts.has(u) is False:
            yield u
