# SPDX-License-Identifier: GPL-3.0-or-later
# Copyright (c) 2026 vmsafe.protect contributors
"""Check a PowerShell script against Microsoft's reference (``reference.json`` + ``output_types.json``).

The script is parsed with tree-sitter-powershell; every command invocation is checked: the cmdlet is in the
reference (or is a function the script defines), every named parameter exists (an abbreviation must be
unambiguous, as PowerShell requires), the parameters used together fit one parameter set, that set's mandatory
parameters are given (by name, by position, or from the pipeline where the reference says the parameter takes
pipeline input), literal values are among the accepted values. Property reads (``$x.Prop``) are checked where the
object's origin can be traced: a cmdlet's output type, a CIM class (``Get-CimInstance -ClassName``,
``Get-CimAssociatedInstance -ResultClassName``), a CIM method's result (``ReturnValue`` and its out parameters),
through variables, pipelines (``$_`` in Where-Object / ForEach-Object / Sort-Object blocks) and the script's own
functions (return value, and parameters typed from their call sites). ``Invoke-CimMethod`` calls are checked
against the method's MOF signature: method on the class (or a base class), argument names that are [in]
parameters, REF parameters given a CimInstance of a compatible class and never a PowerShell ``[ref]``.

What cannot be traced (JSON payload fields, .NET objects, hashtables the script builds) is not checked.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import typing as t

HERE = os.path.dirname(os.path.abspath(__file__))

# Object types: ("ps", type name) | ("cim", class) | ("cimclass", class) | ("cimresult", class, method)
#             | ("hash", {key: (node, type)}) | ("ref", inner type) | None (unknown)
Type = t.Optional[tuple]

# PowerShell type accelerators -> the MOF type a value cast to them arrives as.
CAST_TO_MOF = {"byte": "uint8", "sbyte": "sint8", "uint16": "uint16", "int16": "sint16", "uint32": "uint32",
               "int": "sint32", "int32": "sint32", "uint64": "uint64", "long": "sint64", "int64": "sint64",
               "string": "string", "bool": "boolean", "datetime": "datetime"}
# Cmdlets that pass their input objects through unchanged (a filter or a sort).
PASS_THROUGH = {"Where-Object", "Sort-Object", "Select-Object"}
# Cmdlets whose script-block arguments see the incoming pipeline object as $_.
SCRIPT_BLOCK_PIPE = {"Where-Object", "ForEach-Object", "Sort-Object", "Select-Object"}
# Cmdlets whose literal positional/-Property arguments name properties of the incoming objects.
PROPERTY_ARGS = {"Sort-Object": "Property", "Select-Object": "Property"}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One disagreement with the reference: ``kind`` (see KINDS), the script line, a message."""

    kind: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: [{self.kind}] {self.message}"


KINDS = ("unknown-command", "unknown-parameter", "ambiguous-parameter", "parameter-set", "missing-mandatory",
         "positional", "accepted-value", "unknown-property", "unknown-cim-class", "unknown-cim-method",
         "cim-argument", "cim-ref-argument", "cim-namespace", "property-value")


@dataclasses.dataclass(frozen=True)
class PayloadConstraint:
    """A payload field the script passes straight to a parameter that only takes ``accepted`` values."""

    key: str
    cmdlet: str
    parameter: str
    accepted: tuple[str, ...]


@functools.lru_cache(maxsize=None)
def load_reference() -> dict[str, t.Any]:
    with open(os.path.join(HERE, "reference.json"), encoding="utf-8") as handle:
        reference = json.load(handle)
    with open(os.path.join(HERE, "output_types.json"), encoding="utf-8") as handle:
        kept = json.load(handle)["types"]
    types: dict[str, dict[str, t.Any]] = {}
    for name, entry in kept.items():
        for alias in [name, *entry.get("aliases", [])]:
            types[alias.lower()] = {"name": name, **entry}
    reference["output_types"] = types
    return reference


@functools.lru_cache(maxsize=1)
def _parser() -> t.Any:
    import tree_sitter  # pylint: disable=import-outside-toplevel
    import tree_sitter_powershell  # pylint: disable=import-outside-toplevel
    return tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))


class Checker:
    """Walks one script; ``findings`` and ``constraints`` hold the results after ``run()``."""

    def __init__(self, text: str) -> None:
        self.ref = load_reference()
        self.src = text.encode("utf-8")
        self.root = _parser().parse(self.src).root_node
        self.findings: list[Finding] = []
        self.constraints: list[PayloadConstraint] = []
        self.functions: dict[str, tuple[list[str], t.Any]] = {}
        self.returns: dict[str, Type] = {}
        self.call_types: dict[str, list[list[Type]]] = {}
        self.quiet = 0
        # property reads checked: (object type, property, evidence); and the member reads that could not be traced
        self.reads: set[tuple[str, str, str]] = set()
        self.untraced: set[str] = set()
        self.uncalled = False  # visiting a function the script never calls: its parameters cannot be traced

    # -- helpers -----------------------------------------------------------------------------------------

    def text(self, node: t.Any) -> str:
        return self.src[node.start_byte:node.end_byte].decode("utf-8")

    def report(self, kind: str, node: t.Any, message: str) -> None:
        if not self.quiet:
            finding = Finding(kind, node.start_point[0] + 1, message)
            if finding not in self.findings:
                self.findings.append(finding)

    @staticmethod
    def named(node: t.Any) -> list[t.Any]:
        return [c for c in node.children if c.is_named]

    def cim_class(self, name: str) -> dict[str, t.Any] | None:
        classes = self.ref["cim_classes"]
        return next((v for k, v in classes.items() if k.lower() == name.lower()), None)

    def class_chain(self, name: str) -> tuple[list[str], bool]:
        """The class and its documented bases; the flag says whether the chain ends inside the reference."""
        chain, current = [], name
        while current:
            entry = self.cim_class(current)
            if entry is None:
                return chain, False
            chain.append(next(k for k in self.ref["cim_classes"] if k.lower() == current.lower()))
            current = entry.get("base")
        return chain, True

    def cim_member(self, cls: str, group: str, member: str) -> dict[str, t.Any] | None:
        """A property or method (``group``) of ``cls`` or of one of its documented base classes, or None."""
        for name in self.class_chain(cls)[0]:
            for key, value in self.ref["cim_classes"][name][group].items():
                if key.lower() == member.lower():
                    return value
        return None

    def cim_property(self, cls: str, prop: str) -> dict[str, t.Any] | None:
        return self.cim_member(cls, "properties", prop)

    def cim_method(self, cls: str, method: str) -> dict[str, t.Any] | None:
        return self.cim_member(cls, "methods", method)

    def derives(self, cls: str, base: str) -> bool | None:
        """Whether ``cls`` is ``base`` or derives from it; None when the documented chain ends too early."""
        chain, complete = self.class_chain(cls)
        names = [n.lower() for n in chain]
        if base.lower() in names:
            return True
        last = self.cim_class(chain[-1]) if chain else None
        if last and last.get("base") and last["base"].lower() == base.lower():
            return True
        if complete:
            return False
        # The chain leaves the reference at a DMTF CIM_ class; the CIM schema's classes never derive from a vendor
        # (Msvm_, MSFT_) class, so such a class cannot be reached from there.
        if last and str(last.get("base", "")).startswith("CIM_") and not base.startswith("CIM_"):
            return False
        return None

    @staticmethod
    def ref_type(mof_type: str) -> Type:
        if mof_type.endswith(" REF") or " REF" in mof_type:
            return ("cim", mof_type.split()[0])
        return None

    # -- entry point -------------------------------------------------------------------------------------

    def run(self) -> Checker:
        for node in self._walk_functions(self.root):
            name = self.text(node.child_by_field_name("name") or self.named(node)[0])
            params = []
            for child in self.named(node):
                if child.type == "function_parameter_declaration":
                    params = [self.text(v)[1:].lower() for v in self._descendants(child, "variable")]
            body = next(c for c in self.named(node) if c.type == "script_block")
            self.functions[name.lower()] = (params, body)
        # Return types first (quietly: the bodies are checked for real below, once their callers are known).
        self.quiet += 1
        for name, (params, body) in self.functions.items():
            self.returns[name] = self.block(body, {})
        self.quiet -= 1
        top: dict[str, Type] = {}
        self.block(self.root, top)
        for name, (params, body) in self.functions.items():
            calls = self.call_types.get(name) or [[]]
            self.uncalled = not self.call_types.get(name)
            seen = set()
            for args in calls:
                env = dict(top)  # PowerShell functions see their caller's variables
                env.update({p: (args[i] if i < len(args) else None) for i, p in enumerate(params)})
                key = repr(sorted(env.items(), key=lambda kv: kv[0]))
                if key in seen:
                    continue
                seen.add(key)
                self.block(body, env)
        self.uncalled = False
        return self

    def _walk_functions(self, node: t.Any) -> t.Iterator[t.Any]:
        for child in self.named(node):
            if child.type == "function_statement":
                yield child
            yield from self._walk_functions(child)

    def _descendants(self, node: t.Any, kind: str) -> list[t.Any]:
        found = []
        for child in self.named(node):
            if child.type == kind:
                found.append(child)
            found.extend(self._descendants(child, kind))
        return found

    # -- statements and expressions ----------------------------------------------------------------------

    def block(self, node: t.Any, env: dict[str, Type]) -> Type:
        """Visit a statement list (or anything holding statements); return the type of its last statement."""
        last: Type = None
        for child in self.named(node):
            if child.type == "function_statement":
                continue
            last = self.expr(child, env)
        return last

    def expr(self, node: t.Any, env: dict[str, Type]) -> Type:
        kind = node.type
        if kind == "function_statement":
            return None
        if kind in ("statement_list", "script_block_body", "script_block", "program"):
            return self.block(node, env)
        if kind == "variable":
            return env.get(self.text(node)[1:].lower())
        if kind == "string_literal" and self.text(node).startswith("'"):
            return ("str", self.text(node)[1:-1].replace("''", "'"))
        if kind in ("pipeline", "pipeline_chain"):
            return self.pipeline(node, env)
        if kind == "assignment_expression":
            return self.assignment(node, env)
        if kind == "command":
            return self.command(node, env, None, True)
        if kind == "member_access":
            return self.member(node, env)
        if kind == "comparison_expression":
            return self.comparison(node, env)
        if kind == "cast_expression":
            children = self.named(node)
            inner = self.expr(children[-1], env)
            return ("ref", inner, children[-1]) if self.text(children[0]).lower() == "[ref]" else None
        if kind == "hash_literal_expression":
            entries = {}
            body = next((c for c in self.named(node) if c.type == "hash_literal_body"), None)
            for entry in [c for c in self.named(body) if c.type == "hash_entry"] if body is not None else []:
                key, value = self.named(entry)[0], self.named(entry)[-1]
                entries[self.text(key).lower()] = (self.text(key), value, self.expr(value, env))
            return ("hash", entries)
        if kind == "script_block_expression":
            self.block(node, env)
            return None
        if kind == "catch_clause":
            saved = env.get("_")
            env["_"] = None  # the error record, not a pipeline object
            self.block(node, env)
            env["_"] = saved
            return None
        if kind in ("element_access",):
            children = self.named(node)
            base = self.expr(children[0], env)
            for child in children[1:]:
                self.expr(child, env)
            return base
        children = self.named(node)
        if kind in ("parenthesized_expression", "sub_expression", "array_expression"):
            return self.block(node, env) if len(children) != 1 else self.expr(children[0], env)
        if len(children) == 1:
            return self.expr(children[0], env)
        for child in children:  # operators, conditions, loops: visit for their findings; no traceable type
            self.expr(child, env)
        return None

    def comparison(self, node: t.Any, env: dict[str, Type]) -> Type:
        """``$x.Prop -eq <literal>``: the literal must be one of the values the reference lists for Prop."""
        children = self.named(node)
        if len(children) == 1:  # the grammar wraps every expression in a one-child comparison_expression
            return self.expr(children[0], env)
        for child in children:
            self.expr(child, env)
        if len(children) != 3 or self.text(children[1]).lower() not in ("-eq", "-ne", "-ieq", "-ine", "-ceq", "-cne"):
            return None
        left = children[0]
        while left.type != "member_access" and len(self.named(left)) == 1:
            left = self.named(left)[0]
        if left.type != "member_access":
            return None
        base = self.expr(self.named(left)[0], env)
        if not base or base[0] != "cim":
            return None
        name = self.text(self.named(left)[-1])
        values = (self.cim_property(base[1], name) or {}).get("values")
        right = children[2]
        while len(self.named(right)) == 1 and right.type not in ("string_literal", "integer_literal"):
            right = self.named(right)[0]
        if not values or right.type not in ("string_literal", "integer_literal"):
            return None
        literal: str | int = self.text(right)[1:-1] if right.type == "string_literal" else int(self.text(right))
        if not any(str(v).lower() == str(literal).lower() for v in values):
            self.report("property-value", right, f"{base[1]}.{name} is compared with {literal!r}, which is not one "
                        f"of its documented values ({', '.join(str(v) for v in values)})")
        return None

    def assignment(self, node: t.Any, env: dict[str, Type]) -> Type:
        children = self.named(node)
        left, op, right = children[0], children[1], children[-1]
        value = self.expr(right, env)
        names = self._descendants(left, "variable") if left.type != "variable" else [left]
        if len(names) == 1 and self.text(left).strip() == self.text(names[0]):
            env[self.text(names[0])[1:].lower()] = value if self.text(op).strip() == "=" else None
        else:
            self.expr(left, env)
        return None

    def pipeline(self, node: t.Any, env: dict[str, Type]) -> Type:
        current: Type = None
        parts = self.named(node)
        for index, part in enumerate(parts):
            if part.type == "command":
                current = self.command(part, env, current, index == 0)
            else:
                current = self.expr(part, env)
        return current

    def member(self, node: t.Any, env: dict[str, Type]) -> Type:
        children = self.named(node)
        base = self.expr(children[0], env)
        name_node = children[-1]
        name = self.text(name_node)
        if base is None or name_node.type != "member_name":
            if not self.quiet and not self.uncalled:
                self.untraced.add(self.text(node))
            return None
        return self.property(base, name, node)

    def property(self, base: tuple, name: str, node: t.Any) -> Type:
        kind = base[0]
        if kind == "ref":
            return None
        if kind == "ps":
            entry = self.ref["output_types"].get(base[1].lower())
            if entry is None:
                return None
            known = next((v for p, v in entry["properties"].items() if p.lower() == name.lower()), None)
            if known is None:
                self.report("unknown-property", node, f"'{name}' is not a property of {entry['name']} in the "
                            f"reference (known: {', '.join(sorted(entry['properties']))})")
            elif not self.quiet:
                self.reads.add((entry["name"], name, known["evidence"]))
            return None
        if kind == "cim":
            chain, complete = self.class_chain(base[1])
            if not chain:
                return None
            found = self.cim_property(base[1], name)
            if found is None:
                where = "" if complete else f" (its documented classes: {' -> '.join(chain)})"
                self.report("unknown-property", node, f"'{name}' is not a property of CIM class {base[1]}{where}")
                return None
            if not self.quiet:
                self.reads.add((base[1], name, "cim-class"))
            return self.ref_type(found["type"])
        if kind == "cimresult":
            method = self.cim_method(base[1], base[2])
            if method is None:
                return None
            if name.lower() in ("returnvalue", "pscomputername"):  # output_types.json cim_cmdlet_rules.method_result
                if not self.quiet:
                    self.reads.add((f"{base[1]}.{base[2]}()", name, "cim-method"))
                return None
            for param in method["parameters"]:
                if param["name"].lower() == name.lower():
                    if not param["out"]:
                        self.report("unknown-property", node, f"'{name}' is an [in] parameter of {base[1]}."
                                    f"{base[2]}, not part of its result")
                    elif not self.quiet:
                        self.reads.add((f"{base[1]}.{base[2]}()", name, "cim-method"))
                    return ("cim", param["type"]) if param["ref"] else None
            self.report("unknown-property", node, f"'{name}' is not an out parameter of {base[1]}.{base[2]} "
                        f"(nor ReturnValue)")
        return None

    # -- commands ----------------------------------------------------------------------------------------

    def elements(self, node: t.Any) -> list[tuple[t.Any | None, t.Any | None, bool]]:
        """(parameter node or None, value node or None, colon-attached) for each element of a command."""
        found: list[tuple[t.Any | None, t.Any | None, bool]] = []
        holder = next((c for c in self.named(node) if c.type == "command_elements"), None)
        if holder is None:
            return found
        colon = False
        for child in holder.children:
            if child.type == "command_argument_sep":
                colon = self.text(child).strip() == ":"
                continue
            if child.type == "command_parameter":
                found.append((child, None, False))
            elif found and found[-1][0] is not None and found[-1][1] is None and colon:
                found[-1] = (found[-1][0], child, True)
            else:
                found.append((None, child, False))
            colon = False
        return found

    def resolve(self, cmdlet: dict[str, t.Any], given: str, node: t.Any, cmd_name: str) -> str | None:
        names: dict[str, str] = {}
        for pname, entry in cmdlet["parameters"].items():
            names[pname.lower()] = pname
            for alias in entry.get("aliases", []):
                names[alias.lower()] = pname
        for common in cmdlet["common_parameters"]:
            names.setdefault(common.lower(), common)
        low = given.lower()
        if low in names:
            return names[low]
        matches = sorted({target for key, target in names.items() if key.startswith(low)})
        if len(matches) == 1:
            return matches[0]
        if matches:
            self.report("ambiguous-parameter", node, f"{cmd_name}: -{given} is ambiguous ({', '.join(matches)})")
        else:
            self.report("unknown-parameter", node, f"{cmd_name} has no parameter -{given} "
                        f"(documented: {', '.join(sorted(cmdlet['parameters']))})")
        return None

    def command(self, node: t.Any, env: dict[str, Type], incoming: Type, first: bool) -> Type:
        name_node = next(c for c in self.named(node) if c.type == "command_name")
        name = self.text(name_node)
        elements = self.elements(node)
        if name.lower() in self.functions:
            args = []
            for param, value, _colon in elements:
                if value is not None:
                    args.append(self.expr(value, env))
            self.call_types.setdefault(name.lower(), [])
            if not self.quiet:
                self.call_types[name.lower()].append(args)
            return self.returns.get(name.lower())
        cmdlet = next((v for k, v in self.ref["cmdlets"].items() if k.lower() == name.lower()), None)
        if cmdlet is None:
            self.report("unknown-command", name_node, f"'{name}' is neither in the reference nor a function of "
                        f"the script")
            for _param, value, _colon in elements:
                if value is not None:
                    self.expr(value, env)
            return None
        cmd_name = next(k for k in self.ref["cmdlets"] if k.lower() == name.lower())
        bound: dict[str, t.Any] = {}  # parameter -> value node (None for a switch)
        positional: list[t.Any] = []
        index = 0
        while index < len(elements):
            param, value, colon = elements[index]
            index += 1
            if param is None:
                positional.append(value)
                continue
            pname = self.resolve(cmdlet, self.text(param).lstrip("-").rstrip(":"), param, cmd_name)
            entry = cmdlet["parameters"].get(pname or "")
            if value is None and entry is not None and not entry["switch"] and index < len(elements) \
                    and elements[index][0] is None:
                value = elements[index][1]
                index += 1
            if pname:
                bound[pname] = value
        # Which parameter sets fit the named parameters
        sets = list(cmdlet["sets"])
        named_sets = set(sets)
        for pname in bound:
            entry = cmdlet["parameters"].get(pname)
            if entry is not None:
                named_sets &= set(entry["sets"])
        if not named_sets and bound:
            groups = {p: sorted(cmdlet["parameters"][p]["sets"]) for p in bound
                      if p in cmdlet["parameters"] and set(cmdlet["parameters"][p]["sets"]) != set(sets)}
            self.report("parameter-set", name_node, f"{cmd_name}: parameters "
                        f"{', '.join('-' + p for p in groups)} are in no common parameter set "
                        f"({'; '.join(f'-{p}: {s}' for p, s in groups.items())})")
        viable, problems = [], []
        for set_name in [s for s in sets if s in named_sets]:
            slots = sorted((e["sets"][set_name]["position"], p) for p, e in cmdlet["parameters"].items()
                           if set_name in e["sets"] and e["sets"][set_name]["position"] is not None
                           and p not in bound)
            if len(positional) > len(slots):
                problems.append(("positional", f"{cmd_name} ({set_name}): {len(positional)} positional "
                                 f"argument(s), {len(slots)} positional parameter(s) left"))
                continue
            given = dict(bound)
            for (_pos, pname), value in zip(slots, positional):
                given[pname] = value
            missing = [p for p, e in cmdlet["parameters"].items()
                       if set_name in e["sets"] and e["sets"][set_name]["required"] and p not in given]
            piped = [p for p in missing if cmdlet["parameters"][p]["pipeline"]]
            if missing and (first or len(missing) > 1 or missing != piped):
                problems.append(("missing-mandatory", f"{cmd_name} ({set_name}): mandatory "
                                 f"{', '.join('-' + p for p in missing)} not given"
                                 + ("" if first else " (and not all of them take pipeline input)")))
                continue
            viable.append((set_name, given))
        if named_sets and not viable and problems:
            kind, message = problems[0]
            if any(k == "missing-mandatory" for k, _m in problems):
                kind, message = next(p for p in problems if p[0] == "missing-mandatory")
            self.report(kind, name_node, message)
        chosen = next((v for v in viable if v[0] == cmdlet["default_set"]), viable[0] if viable else
                      (None, dict(bound)))
        given = chosen[1]
        # Values: accepted values, payload constraints, nested expressions ($_ = the incoming objects)
        values: dict[str, Type] = {}
        for pname, value in given.items():
            if value is None:
                continue
            entry = cmdlet["parameters"].get(pname, {})
            if name.lower() in {n.lower() for n in SCRIPT_BLOCK_PIPE} and value.type != "command_parameter":
                saved = env.get("_")
                env["_"] = incoming
                values[pname] = self.expr(value, env)
                env["_"] = saved
            else:
                values[pname] = self.expr(value, env)
            accepted = entry.get("accepted_values")
            if accepted:
                literal = self.literal(value)
                if literal is not None and literal.lower() not in {a.lower() for a in accepted}:
                    self.report("accepted-value", value, f"{cmd_name} -{pname} '{literal}' is not one of "
                                f"{', '.join(accepted)}")
                payload_key = self.payload_key(value)
                if payload_key:
                    self.constraints.append(PayloadConstraint(payload_key, cmd_name, pname, tuple(accepted)))
        for extra in positional[len([p for p in given if given[p] in positional]):]:
            self.expr(extra, env)
        return self.output(cmd_name, cmdlet, given, values, incoming, node)

    def literal(self, node: t.Any) -> str | None:
        while node is not None and node.type in ("array_literal_expression", "unary_expression") \
                and len(self.named(node)) == 1:
            node = self.named(node)[0]
        if node is None:
            return None
        if node.type == "generic_token":
            return self.text(node)
        if node.type == "string_literal":
            return self.text(node)[1:-1]
        return None

    def payload_key(self, node: t.Any) -> str | None:
        text = self.text(node).strip()
        for prefix in ("$payload.", "[string]$payload."):
            if text.startswith(prefix) and text[len(prefix):].isidentifier():
                return text[len(prefix):]
        return None

    # -- what a cmdlet outputs, and the CIM-specific checks -------------------------------------------------------

    def output(self, name: str, cmdlet: dict[str, t.Any], given: dict[str, t.Any], values: dict[str, Type],
               incoming: Type, node: t.Any) -> Type:
        if name in PASS_THROUGH:
            prop_param = PROPERTY_ARGS.get(name)
            if prop_param and prop_param in given and incoming is not None:
                for prop in self.literal_list(given[prop_param]):
                    self.property(incoming, prop, given[prop_param])
            if name == "Select-Object" and ({"Property", "ExpandProperty"} & set(given)):
                return None
            return incoming
        if name in ("Get-CimInstance", "Get-CimClass") and "ClassName" in given:
            self.namespace(given["ClassName"], values.get("Namespace"), "Namespace" in given)
        if name == "Get-CimInstance":
            if "ClassName" in given:
                return self.class_literal(given["ClassName"])
            source = values.get("InputObject")
            return source if source and source[0] == "cim" else None
        if name == "Get-CimAssociatedInstance":
            return self.class_literal(given["ResultClassName"]) if "ResultClassName" in given else None
        if name == "Get-CimClass":
            found = self.class_literal(given["ClassName"]) if "ClassName" in given else None
            return ("cimclass", found[1]) if found else None
        if name == "New-CimInstance":
            cls = None
            if "ClassName" in given:
                found = self.class_literal(given["ClassName"])
                cls = found[1] if found else None
            elif incoming and incoming[0] == "cimclass":
                cls = incoming[1]
            elif values.get("CimClass") and values["CimClass"][0] == "cimclass":
                cls = values["CimClass"][1]
            prop = values.get("Property")
            if cls and prop and prop[0] == "hash":
                for key, (label, value_node, _vtype) in prop[1].items():
                    declared = self.cim_property(cls, key)
                    if declared is None:
                        self.report("unknown-property", value_node, f"New-CimInstance -Property: '{label}' is not a "
                                    f"property of CIM class {cls}")
                    else:
                        self.cast_fits(value_node, declared["type"], f"{cls}.{label}")
            return ("cim", cls) if cls else None
        if name == "Invoke-CimMethod":
            return self.invoke_cim(given, values, node)
        passthru = any(p.lower() == "passthru" for p in given)
        outputs = [o["type"] for o in cmdlet["outputs"] if o["type"] != "None"
                   and (o["when"] == "always" or passthru)]
        if not outputs:
            return None
        out = outputs[-1]
        if "#" in out and out.startswith("Microsoft.Management.Infrastructure.CimInstance"):
            return ("cim", out.rsplit("/", 1)[-1])
        # a page may list several output types (Get-VMNetworkAdapter: VMNetworkAdapter, VMInternalNetworkAdapter, and
        # a text naming both): the last one output_types.json describes is the one traced
        known = [o for o in reversed(outputs) if o.lower() in self.ref["output_types"]]
        return ("ps", known[0]) if known else None

    def literal_list(self, node: t.Any) -> list[str]:
        single = self.literal(node)
        if single is not None:
            return [single]
        return [v for v in (self.literal(c) for c in self._descendants(node, "generic_token")) if v]

    def class_literal(self, node: t.Any) -> Type:
        literal = self.literal(node)
        if literal is None:
            return None
        if self.cim_class(literal) is None:
            self.report("unknown-cim-class", node, f"CIM class '{literal}' is not in the reference")
            return None
        return ("cim", next(k for k in self.ref["cim_classes"] if k.lower() == literal.lower()))

    def namespace(self, class_node: t.Any, value: Type, given: bool) -> None:
        """A class asked for by name must be asked for in the namespace its page documents."""
        literal = self.literal(class_node)
        entry = self.cim_class(literal) if literal else None
        if entry is None or not entry.get("namespace"):
            return
        want = entry["namespace"].replace("/", "\\").lower()
        if not given:
            self.report("cim-namespace", class_node, f"{literal} lives in {entry['namespace']}; without -Namespace "
                        f"the CIM cmdlets look in root/cimv2")
        elif value and value[0] == "str" and value[1].replace("/", "\\").lower() != want:
            self.report("cim-namespace", class_node, f"{literal} lives in {entry['namespace']}, not {value[1]}")

    def invoke_cim(self, given: dict[str, t.Any], values: dict[str, Type], node: t.Any) -> Type:
        cls = None
        declared = False  # the cmdlet converts arguments with the method's declaration (InputObject / CimClass)
        target = values.get("InputObject")
        if target and target[0] == "cim":
            cls, declared = target[1], True
        elif values.get("CimClass") and values["CimClass"][0] == "cimclass":
            cls, declared = values["CimClass"][1], True
        elif "ClassName" in given:
            found = self.class_literal(given["ClassName"])
            cls = found[1] if found else None
        method_name = self.literal(given["MethodName"]) if "MethodName" in given else None
        if cls is None or method_name is None:
            return None
        method = self.cim_method(cls, method_name)
        if method is None:
            self.report("unknown-cim-method", given["MethodName"], f"{cls} has no documented method "
                        f"'{method_name}' (documented: {', '.join(self.documented_methods(cls)) or 'none'})")
            return None
        arguments = values.get("Arguments")
        if arguments and arguments[0] == "hash":
            params = {p["name"].lower(): p for p in method["parameters"]}
            for key, (label, value_node, vtype) in arguments[1].items():
                param = params.get(key)
                if param is None or not param["in"]:
                    self.report("cim-argument", value_node, f"{cls}.{method_name} has no [in] parameter '{label}' "
                                f"(in: {', '.join(p['name'] for p in method['parameters'] if p['in'])})")
                    continue
                self.cim_argument(cls, method_name, param, value_node, vtype, declared)
        return ("cimresult", cls, method_name)

    def documented_methods(self, cls: str) -> list[str]:
        return sorted(m for name in self.class_chain(cls)[0] for m in self.ref["cim_classes"][name]["methods"])

    def cim_argument(self, cls: str, method: str, param: dict[str, t.Any], node: t.Any, vtype: Type,
                     declared: bool) -> None:
        where = f"{cls}.{method} {param['name']}"
        if param["ref"]:
            if vtype and vtype[0] == "ref":
                if declared:  # output_types.json cim_cmdlet_rules.ref_arguments
                    self.report("cim-ref-argument", node, f"{where} is '{param['type']} REF': with -InputObject or "
                                f"-CimClass Invoke-CimMethod converts each argument to the type the method declares, "
                                f"and a PowerShell [ref] is not a CimInstance; pass the CimInstance itself")
                vtype = vtype[1]
            if vtype and vtype[0] == "cim":
                fits = self.derives(vtype[1], param["type"])
                if fits is False:
                    self.report("cim-ref-argument", node, f"{where} wants a {param['type']} reference; "
                                f"{vtype[1]} does not derive from it in the reference")
            elif vtype is not None:
                self.report("cim-ref-argument", node, f"{where} wants a {param['type']} reference, not {vtype[0]}")
        elif vtype and vtype[0] in ("cim", "ref"):
            self.report("cim-argument", node, f"{where} is a {param['type']} value, not a CIM reference")
        else:
            self.cast_fits(node, param["type"] + ("[]" if param["array"] else ""), where)

    def cast_fits(self, node: t.Any, mof_type: str, where: str) -> None:
        """A value cast to a .NET type must arrive as the MOF type the reference declares."""
        while node is not None and node.type != "cast_expression" and len(self.named(node)) == 1:
            node = self.named(node)[0]
        if node is None or node.type != "cast_expression":
            return
        cast = self.text(self.named(node)[0]).strip("[]").lower()
        want = mof_type.lower()
        if cast in CAST_TO_MOF and not want.endswith("[]") and CAST_TO_MOF[cast] != want:
            self.report("cim-argument", node, f"{where} is {mof_type}; the script casts it to [{cast}] "
                        f"({CAST_TO_MOF[cast]})")


def check_script(text: str) -> list[Finding]:
    """The findings for one script (empty when it agrees with the reference as far as it can be traced)."""
    return Checker(text).run().findings


def payload_constraints(text: str) -> list[PayloadConstraint]:
    """Payload fields the script hands to parameters with a fixed set of accepted values."""
    return Checker(text).run().constraints
