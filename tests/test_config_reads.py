"""Every config key is read by the package, under its own section.

The official AutoSlim configs silently trained without distillation because a key was read under
another name (design.md, section 4). Grepping a key's last name cannot catch that here: 36 of
the 66 keys share their last name with another key (``retrain.num_epochs`` and
``supernet.num_epochs``), so an unread ``retrain.X`` passed whenever ``supernet.X`` was read, and
comments and messages counted as reads.

This check follows the config object itself through the package's syntax trees (``ast``: a
comment or a string is never a read). It starts where the commands get the config
(``FLAGS.config`` in ``main.py`` and ``experiment.py``) and tracks which config node (the root, a
section, a leaf) each name may hold, through assignments (``cfg = config.retrain``), calls (a
section passed as an argument binds the callee's parameter; a function that receives sections
from several call sites, e.g. ``train.fit(name, cfg, ...)`` called with ``config.supernet`` and
with ``config.retrain``, holds all of them), return values (``with_seed`` returns the config),
instance attributes (``self.config = config``) and for-loops over constant tuples of names
(``targets[metric] for metric in METRICS``), until nothing changes. A leaf counts as read where
an attribute or subscript reaches it outside of an f-string, ``logging`` or ``print`` call (a key
that only appears in a message does nothing). Nothing is mapped by hand: a section handed
around in a way this analysis cannot follow shows up as unread, and the fix is to read it plainly.
``defaults.py`` (which declares and validates the keys) is left out.
"""

from __future__ import annotations

import ast
import glob
import os
from typing import Mapping

from autoslim_jax import defaults
from conftest import REPO

PACKAGE = 'autoslim_jax'
# Methods of a ConfigDict that return the same node (a copy of it).
COPY_METHODS = ('copy_and_resolve_references', 'copy')
# Calls whose arguments are messages: a key read there only is not used.
MESSAGE_CALLS = ('print',)
MESSAGE_MODULES = ('logging',)


def config_tree(config) -> tuple[set[tuple[str, ...]], set[tuple[str, ...]]]:
  """(section paths, leaf paths) of a config; ``model_kwargs`` is a leaf (the model's)."""
  sections, leaves = {()}, set()

  def walk(node, prefix):
    for key, value in node.items():
      path = prefix + (key,)
      if key != 'model_kwargs' and hasattr(value, 'items'):
        sections.add(path)
        walk(value, path)
      else:
        leaves.add(path)

  walk(config, ())
  return sections, leaves


class _Scope:
  """A function, lambda or module body: the values each of its names may hold."""

  def __init__(self, node, parent, module, cls=None):
    self.node, self.parent, self.module, self.cls = node, parent, module, cls
    self.env: dict[str, set] = {}
    self.returns: set = set()


class _Class:

  def __init__(self, qualname):
    self.qualname = qualname
    self.methods: dict[str, _Scope] = {}
    self.attrs: dict[str, set] = {}


class ConfigReads:
  """The leaves of a config tree that the code of ``sources`` ({module name: source}) reads.

  Abstract values: ('cfg', path) a config node, ('str', s) a string constant, ('fn', scope) a
  function, ('cls', name) a class, ('inst', name) an instance, ('method', class, name) a bound
  method, ('copy', path) a copy method of a config node, ('mod', name) a module.
  """

  def __init__(self, sources: Mapping[str, str], sections, leaves):
    self.sections, self.leaves = set(sections), set(leaves)
    self.nodes = self.sections | self.leaves
    self.read: set = set()  # leaves read by code
    self.quoted: set = set()  # leaves only put into messages
    self.scopes: dict[int, _Scope] = {}
    self.classes: dict[str, _Class] = {}
    self.modules: dict[str, _Scope] = {}
    self.changed = False
    for name, source in sources.items():
      tree = ast.parse(source)
      scope = self.modules[name] = _Scope(tree, None, name)
      self._register(tree, scope, name, None)
    for _ in range(100):
      self.changed = False
      for scope in list(self.scopes.values()) + list(self.modules.values()):
        self._visit_scope(scope)
      if not self.changed:
        break
    else:
      raise AssertionError('the config-read analysis did not settle in 100 passes')

  # Registration: every function and lambda is a scope; classes collect their methods.

  def _register(self, node, scope, module, cls):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
        parent = self.modules[module] if cls is not None else scope
        inner = _Scope(child, parent, module, cls)
        self.scopes[id(child)] = inner
        if cls is not None:
          cls.methods[child.name] = inner
          params = child.args.posonlyargs + child.args.args
          if params and not any(isinstance(d, ast.Name) and d.id == 'staticmethod'
                                for d in child.decorator_list):
            inner.env[params[0].arg] = {('inst', cls.qualname)}
        self._register(child, inner, module, None)
      elif isinstance(child, ast.Lambda):
        inner = self.scopes[id(child)] = _Scope(child, scope, module)
        self._register(child, inner, module, None)
      elif isinstance(child, ast.ClassDef):
        info = self.classes[f'{module}.{child.name}'] = _Class(f'{module}.{child.name}')
        self._register(child, scope, module, info)
      else:
        self._register(child, scope, module, cls)

  # Environments.

  def _add(self, env, key, values):
    values = set(values)
    if not values <= env.setdefault(key, set()):
      env[key] |= values
      self.changed = True

  def _lookup(self, scope, name):
    while scope is not None:
      if name in scope.env:
        return scope.env[name]
      scope = scope.parent
    return set()

  def _assign(self, target, values, scope, value_node=None):
    if isinstance(target, ast.Name):
      self._add(scope.env, target.id, values)
    elif isinstance(target, (ast.Tuple, ast.List)):
      same_shape = (isinstance(value_node, (ast.Tuple, ast.List))
                    and len(value_node.elts) == len(target.elts))
      for i, element in enumerate(target.elts):
        if same_shape:
          self._assign(element, self._eval(value_node.elts[i], scope), scope)
        else:
          self._assign(element, values, scope)
    elif isinstance(target, ast.Starred):
      self._assign(target.value, values, scope)
    elif isinstance(target, ast.Attribute):  # self.x = ...: an instance attribute
      for base in self._eval(target.value, scope):
        if base[0] == 'inst':
          self._add(self.classes[base[1]].attrs, target.attr, values)
    elif isinstance(target, ast.Subscript):  # a store: its base and key are evaluated only
      self._eval(target.value, scope)
      self._eval(target.slice, scope)

  def _bind(self, callee: _Scope, args, keywords, skip_first):
    params = callee.node.args.posonlyargs + callee.node.args.args
    params = params[1:] if skip_first else params
    for param, values in zip(params, args):
      self._add(callee.env, param.arg, values)
    named = {p.arg for p in params + callee.node.args.kwonlyargs}
    for name, values in keywords.items():
      if name in named:
        self._add(callee.env, name, values)

  # Statements.

  def _visit_scope(self, scope):
    if isinstance(scope.node, ast.Lambda):
      self._add_returns(scope, self._eval(scope.node.body, scope))
    else:
      self._visit_body(scope.node.body, scope, scope.cls)

  def _add_returns(self, scope, values):
    if not set(values) <= scope.returns:
      scope.returns |= set(values)
      self.changed = True

  def _visit_body(self, statements, scope, cls=None):
    for statement in statements:
      self._visit(statement, scope, cls)

  def _visit(self, node, scope, cls=None):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
      for decorator in node.decorator_list:
        self._eval(decorator, scope)
      if cls is None:
        self._add(scope.env, node.name, {('fn', id(node))})
    elif isinstance(node, ast.ClassDef):
      qualname = f'{scope.module}.{node.name}'
      self._add(scope.env, node.name, {('cls', qualname)})
      for statement in node.body:
        if isinstance(statement, (ast.Assign, ast.AnnAssign)) and statement.value is not None:
          targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
          for target in targets:
            if isinstance(target, ast.Name):
              self._add(self.classes[qualname].attrs, target.id, self._eval(statement.value,
                                                                             scope))
        elif not isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef)):
          self._visit(statement, scope, self.classes[qualname])
    elif isinstance(node, (ast.Import, ast.ImportFrom)):
      self._import(node, scope)
    elif isinstance(node, ast.Assign):
      values = self._eval(node.value, scope)
      for target in node.targets:
        self._assign(target, values, scope, node.value)
    elif isinstance(node, ast.AnnAssign):
      if node.value is not None:
        self._assign(node.target, self._eval(node.value, scope), scope, node.value)
    elif isinstance(node, ast.AugAssign):
      self._eval(node.value, scope)
    elif isinstance(node, (ast.For, ast.AsyncFor)):
      self._assign(node.target, self._eval(node.iter, scope), scope)
      self._visit_body(node.body + node.orelse, scope)
    elif isinstance(node, (ast.With, ast.AsyncWith)):
      for item in node.items:
        values = self._eval(item.context_expr, scope)
        if item.optional_vars is not None:
          self._assign(item.optional_vars, values, scope)
      self._visit_body(node.body, scope)
    elif isinstance(node, ast.Return):
      if node.value is not None:
        self._add_returns(scope, self._eval(node.value, scope))
    else:  # if, while, try, raise, assert, expressions: their expressions and bodies
      for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.stmt):
          self._visit(child, scope)
        elif isinstance(child, ast.expr):
          self._eval(child, scope)
        elif isinstance(child, ast.excepthandler):
          if child.type is not None:
            self._eval(child.type, scope)
          self._visit_body(child.body, scope)

  def _import(self, node, scope):
    for alias in node.names:
      if isinstance(node, ast.Import):
        if alias.name.startswith(PACKAGE) and alias.asname:
          self._add(scope.env, alias.asname, {('mod', alias.name)})
        continue
      module = node.module or ''
      if not module.startswith(PACKAGE):
        continue
      full = f'{module}.{alias.name}'
      if full in self.modules or any(m.startswith(full + '.') for m in self.modules):
        self._add(scope.env, alias.asname or alias.name, {('mod', full)})
      elif module in self.modules:
        self._add(scope.env, alias.asname or alias.name, {('member', module, alias.name)})

  # Expressions.

  def _members(self, module, name):
    if f'{module}.{name}' in self.modules:
      return {('mod', f'{module}.{name}')}
    scope = self.modules.get(module)
    return set(scope.env.get(name, ())) if scope is not None else set()

  def _record(self, path, quoted):
    if path in self.leaves:
      (self.quoted if quoted else self.read).add(path)

  def _is_message_call(self, func):
    if isinstance(func, ast.Name):
      return func.id in MESSAGE_CALLS
    return (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
            and func.value.id in MESSAGE_MODULES)

  def _eval(self, node, scope, quoted=False) -> set:
    ev = lambda child, q=quoted: self._eval(child, scope, q)
    if isinstance(node, ast.Name):
      values = set(self._lookup(scope, node.id))
      for value in list(values):
        if value[0] == 'member':
          values.discard(value)
          values |= self._members(value[1], value[2])
      return values
    if isinstance(node, ast.Attribute):
      # The commands' config: FLAGS.config (main.py), main_lib.FLAGS.config (experiment.py).
      if node.attr == 'config' and (
          (isinstance(node.value, ast.Name) and node.value.id == 'FLAGS')
          or (isinstance(node.value, ast.Attribute) and node.value.attr == 'FLAGS')):
        return {('cfg', ())}
      out = set()
      for base in ev(node.value):
        if base[0] == 'cfg':
          child = base[1] + (node.attr,)
          if child in self.nodes and isinstance(node.ctx, ast.Load):
            self._record(child, quoted)
            out.add(('cfg', child))
          elif node.attr in COPY_METHODS:
            out.add(('copy', base[1]))
        elif base[0] == 'mod':
          out |= self._members(base[1], node.attr)
        elif base[0] in ('inst', 'cls'):
          info = self.classes[base[1]]
          if node.attr in info.methods:
            out.add(('method', base[1], node.attr, base[0] == 'inst'))
          else:
            out |= info.attrs.get(node.attr, set())
      return out
    if isinstance(node, ast.Subscript):
      bases, keys = ev(node.value), ev(node.slice)
      out = set()
      for base in bases:
        for key in keys:
          if base[0] == 'cfg' and key[0] == 'str':
            child = base[1] + (key[1],)
            if child in self.nodes and isinstance(node.ctx, ast.Load):
              self._record(child, quoted)
              out.add(('cfg', child))
      return out
    if isinstance(node, ast.Call):
      quoted = quoted or self._is_message_call(node.func)
      functions = ev(node.func)
      args = [ev(a.value if isinstance(a, ast.Starred) else a, quoted) for a in node.args]
      keywords = {k.arg: ev(k.value, quoted) for k in node.keywords if k.arg is not None}
      for k in node.keywords:
        if k.arg is None:
          ev(k.value, quoted)
      out = set()
      for function in functions:
        if function[0] == 'copy':
          out.add(('cfg', function[1]))
        elif function[0] == 'fn':
          callee = self.scopes[function[1]]
          self._bind(callee, args, keywords, skip_first=False)
          out |= callee.returns
        elif function[0] == 'method':
          callee = self.classes[function[1]].methods[function[2]]
          self._bind(callee, args, keywords, skip_first=function[3])
          out |= callee.returns
        elif function[0] == 'cls':
          init = self.classes[function[1]].methods.get('__init__')
          if init is not None:
            self._bind(init, args, keywords, skip_first=True)
          out.add(('inst', function[1]))
      return out
    if isinstance(node, ast.Constant):
      return {('str', node.value)} if isinstance(node.value, str) else set()
    if isinstance(node, ast.JoinedStr):  # an f-string: what it formats is a message
      for value in node.values:
        ev(value, True)
      return set()
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
      return set().union(*(ev(e) for e in node.elts)) if node.elts else set()
    if isinstance(node, ast.IfExp):
      ev(node.test)
      return ev(node.body) | ev(node.orelse)
    if isinstance(node, ast.BoolOp):
      return set().union(*(ev(v) for v in node.values))
    if isinstance(node, ast.NamedExpr):
      values = ev(node.value)
      self._assign(node.target, values, scope)
      return values
    if isinstance(node, ast.Lambda):
      return {('fn', id(node))}
    if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
      for generator in node.generators:
        self._assign(generator.target, ev(generator.iter), scope)
        for condition in generator.ifs:
          ev(condition)
      if isinstance(node, ast.DictComp):
        ev(node.key)
        return ev(node.value)
      return ev(node.elt)
    for child in ast.iter_child_nodes(node):  # operators, comparisons, dicts, ...
      if isinstance(child, ast.expr):
        ev(child)
    return set()


def package_sources() -> dict[str, str]:
  """{module name: source} of the package, without defaults.py."""
  sources = {}
  for path in sorted(glob.glob(os.path.join(REPO, PACKAGE, '**', '*.py'), recursive=True)):
    name = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
    if name == f'{PACKAGE}.defaults':
      continue
    with open(path) as f:
      sources[name[:-len('.__init__')] if name.endswith('.__init__') else name] = f.read()
  return sources


def unread(sources: Mapping[str, str], config) -> tuple[list[str], list[str]]:
  """(keys no code reads, of those the ones that only appear in messages), dotted."""
  sections, leaves = config_tree(config)
  reads = ConfigReads(sources, sections, leaves)
  dotted = lambda paths: sorted('.'.join(p) for p in paths)
  missing = leaves - reads.read
  return dotted(missing), dotted(missing & reads.quoted)


def test_every_config_key_is_read_by_the_code():
  missing, only_in_messages = unread(package_sources(), defaults.get_default_config())
  assert not missing, (f'config keys no code of the package reads (of them, only in messages: '
                       f'{only_in_messages}): {missing}')


def _fake_package(body: str) -> dict[str, str]:
  return {f'{PACKAGE}.main': 'from absl import flags\nfrom autoslim_jax import stage\n'
                             'FLAGS = flags.FLAGS\ndef main(argv):\n  stage.run(FLAGS.config)\n',
          f'{PACKAGE}.stage': body}


def test_the_check_finds_a_key_read_under_another_section_only():
  """The analysis itself: ``retrain.num_epochs`` is unread when only ``supernet.num_epochs`` is
  read (the bug the grep missed), a read through a section passed to a shared function counts
  for every section its call sites pass, and comments, strings, f-strings and log calls are
  not reads."""
  sections = {(), ('supernet',), ('retrain',)}
  leaves = {('supernet', 'num_epochs'), ('retrain', 'num_epochs'), ('supernet', 'batch_size'),
            ('retrain', 'batch_size'), ('retrain', 'mode'), ('supernet', 'optimizer')}
  source = '''
import logging
def run(config):
  cfg = config.supernet
  total = cfg.num_epochs  # config.retrain.num_epochs is in a comment only
  fit(cfg)
  fit(config.retrain)
  logging.info('mode %s', config.retrain.mode)
  message = f'{config.supernet.optimizer}' + "retrain.num_epochs"
def fit(section):
  return section.batch_size
'''
  reads = ConfigReads(_fake_package(source), sections, leaves)
  assert {'.'.join(p) for p in leaves - reads.read} == {
      'retrain.num_epochs', 'retrain.mode', 'supernet.optimizer'}
  assert reads.quoted == {('retrain', 'mode'), ('supernet', 'optimizer')}
  # Passed on, returned, kept on an instance, or looked up by a loop over constant names.
  source = '''
METRICS = ('num_epochs', 'batch_size')
def copy(config):
  config = config.copy_and_resolve_references()
  return config
class Runner:
  def __init__(self, config):
    self.config = config
  def go(self):
    return {name: self.config.retrain[name] for name in METRICS}
def run(config):
  Runner(copy(config)).go()
'''
  reads = ConfigReads(_fake_package(source), sections, leaves)
  assert reads.read == {('retrain', 'num_epochs'), ('retrain', 'batch_size')}
